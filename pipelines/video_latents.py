"""Frames in and out of latent space for `SlowFastVGenPipeline`: encoding start frames and videos with the
VAE, and decoding latents into NumPy, torch or PIL frames, a few frames at a time."""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

from .image_input import ImageInput, frames_to_tensor


class VideoLatentsMixin:
    """Needs the pipeline's `vae`, `unet`, `image_processor`, `video_processor`, `size_multiple` and
    `native_size`."""

    @torch.no_grad()
    def encode_frames(self, frames: ImageInput, resize: bool = False, argument: str = "frames") -> torch.Tensor:
        """Frames -> latents B,C,F,H,W (B = 1): a list or a batch of frames is one clip, its frames the frame axis.

        Accepts PIL images, NumPy arrays (uint8 0-255 or float in [0, 1], H×W×C or N×H×W×C), torch tensors
        (float in [0, 1] or [-1, 1], uint8; C×H×W or N×C×H×W) and lists of them; see `image_input` for the
        whole table and what is refused. `argument` names the input in error messages.
        """
        images = frames_to_tensor(frames, argument)
        height, width = images.shape[-2:]
        multiple, native = self.size_multiple, self.native_size
        if height < multiple or width < multiple:
            raise ValueError(
                f"{argument}: a {width}x{height} image is too small for this world model, which needs at least "
                f"{multiple}x{multiple} (native size {native}x{native}); give a larger image."
            )
        if (height % multiple or width % multiple) and not resize:
            raise ValueError(
                f"{argument}: size {width}x{height} does not fit this world model; width and height must be multiples "
                f"of {multiple} (native size {native}x{native}). Resize the image, or pass resize=True to resize it "
                "to the native size."
            )
        if resize and (height, width) != (native, native):
            # Antialiased: a large photo shrunk to 64x64 without it would alias into noise.
            images = torch.nn.functional.interpolate(images, size=(native, native), mode="bilinear",
                                                     antialias=True, align_corners=False).clamp(0, 1)
        images = self.image_processor.normalize(images).to(device=self._execution_device, dtype=self.vae.dtype)
        return self.encode_pixels(images.permute(1, 0, 2, 3).unsqueeze(0))

    def encode_pixels(self, video: torch.Tensor) -> torch.Tensor:
        """Video B,3,F,H,W in [-1, 1] on the VAE's device -> scaled latents B,C,F,h,w (the posterior's mode).

        The one encoder path: `encode_frames`, the trainer and the slow-fast loop all go through it.
        """
        batch, _, num_frames = video.shape[:3]
        frames = video.permute(0, 2, 1, 3, 4).flatten(0, 1).to(self.vae.dtype)
        latents = self.vae.encode(frames).latent_dist.mode() * self.vae.config.scaling_factor
        return latents.reshape(batch, num_frames, *latents.shape[1:]).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, frames_per_batch: int = 16) -> torch.Tensor:
        """Latents B,C,F,H,W -> video B,3,F,H,W in [-1, 1], decoding `frames_per_batch` frames at a time."""
        batch, channels, num_frames, height, width = latents.shape
        flat = latents.permute(0, 2, 1, 3, 4).reshape(batch * num_frames, channels, height, width)
        decoded = [
            self.vae.decode(part.to(self.vae.device, self.vae.dtype) / self.vae.config.scaling_factor).sample.float()
            for part in flat.split(frames_per_batch)
        ]
        video = torch.cat(decoded).reshape(batch, num_frames, *decoded[0].shape[1:])
        return video.permute(0, 2, 1, 3, 4)

    def postprocess(self, latents: torch.Tensor, output_type: str = "np", frames_per_batch: int = 16):
        """Decode latents into "np" (B,F,H,W,C in [0,1]), "pt" (B,F,C,H,W in [0,1]) or "pil" frames."""
        if output_type == "latent":
            return latents
        return self.video_processor.postprocess_video(self.decode_latents(latents, frames_per_batch), output_type)

    def iter_decode(self, chunks: Iterable[torch.Tensor], output_type: str = "np",
                    frames_per_batch: int = 16) -> Iterator:
        """Decode a long video chunk by chunk, so that it never sits decoded in memory at once."""
        for chunk in chunks:
            for part in chunk.split(frames_per_batch, dim=2):
                yield self.postprocess(part, output_type, frames_per_batch)
