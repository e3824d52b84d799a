"""The losses of slow learning's stages: the masked diffusion loss (paper Eq. 1-2), the VAE's, the inverse
dynamics model's, and the action texts' encoding they share."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..pipelines import SlowFastVGenPipeline
from ..pipelines import inverse_dynamics
from ..pipelines.temp_lora import denoising_target


def masked_diffusion_loss(unet, noise_scheduler, latents: torch.Tensor, num_context: int, text_embeds: torch.Tensor,
                          generator: torch.Generator) -> torch.Tensor:
    """Paper Eq. 1-2: noise only the frames after `num_context`, and compute the loss on those frames only."""
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator).to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    noisy = torch.cat([latents[:, :, :num_context], noisy[:, :, num_context:]], dim=2)
    prediction = unet(noisy, timesteps, encoder_hidden_states=text_embeds).sample
    target = denoising_target(noise_scheduler, latents, noise, timesteps)
    return F.mse_loss(prediction[:, :, num_context:].float(), target[:, :, num_context:].float())


def vae_loss(vae, frames: torch.Tensor, generator: torch.Generator, kl_weight: float = 1e-6) -> torch.Tensor:
    posterior = vae.encode(frames).latent_dist
    latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(frames)
    reconstruction = vae.decode(latents).sample
    return F.mse_loss(reconstruction.float(), frames.float()) + kl_weight * posterior.kl().mean()


def idm_loss(model, classes: tuple[str, ...], pipe: SlowFastVGenPipeline, video: torch.Tensor, num_context: int,
             actions: list[str], generator: torch.Generator) -> torch.Tensor:
    """Cross-entropy of the action between every consecutive frame pair that shows it (the last context
    frame on), the pairs softened like generated frames for a share of them."""
    previous, following = inverse_dynamics.frame_pairs(video, num_context)
    previous, following = inverse_dynamics.soften_like_generated(pipe, previous, following, generator)
    per_clip = torch.tensor([inverse_dynamics.action_index(classes, action) for action in actions])
    labels = per_clip.repeat_interleave(previous.shape[0] // len(actions)).to(video.device)
    return F.cross_entropy(model(previous, following), labels)


def encode_actions(pipe: SlowFastVGenPipeline, text_encoder, actions: list[str], device) -> torch.Tensor:
    tokens = pipe.tokenizer(actions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt")
    return text_encoder(tokens.input_ids.to(device))[0]
