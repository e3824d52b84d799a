"""Build complete world-model pipelines from configs, offline, with random weights.

No model hub is reachable where this project is built and tested, so every model that is not loaded
from a folder starts here: the tiny pipeline of the tests, the mid-size one of the benchmarks and the
ToyWorld model that `training/` trains from scratch. The components are the real diffusers and
transformers classes of a ModelScope text-to-video checkpoint, only smaller, so that every loading and
saving path is the one a full-size model takes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .pipeline_slowfast_vgen import SlowFastVGenPipeline

# Words every action paraphrase of ToyWorld and the tests is made of; each becomes one token.
ACTION_WORDS = (
    "move go walk pan head turn slide travel hold stay wait still position don't remain here the camera "
    "left right up down west east north south forward back a an to of and"
).split()


@dataclass
class WorldModelSpec:
    """Sizes of a world model. `tiny()` is for tests, `toyworld()` is the shipped model, `mid()` benchmarks."""

    image_size: int = 64
    vae_channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = 8
    unet_channels: tuple[int, ...] = (32, 64)
    unet_layers_per_block: int = 1
    unet_head_dim: int = 8
    norm_num_groups: int = 8
    text_hidden_size: int = 64
    text_layers: int = 2
    max_tokens: int = 16
    context_window: int = 8
    prediction_type: str = "sample"
    extra_words: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def tiny(cls) -> "WorldModelSpec":
        return cls(image_size=32, vae_channels=(8, 16), latent_channels=4, unet_channels=(16, 32), unet_head_dim=4,
                   norm_num_groups=4, text_hidden_size=32, text_layers=1, prediction_type="epsilon")

    @classmethod
    def toyworld(cls) -> "WorldModelSpec":
        return cls()

    @classmethod
    def memory_maze(cls) -> "WorldModelSpec":
        """ToyWorld's sizes, with the words of Memory Maze's action paraphrases in the vocabulary."""
        from ..data.memory_maze import EXTRA_WORDS

        return cls(extra_words=EXTRA_WORDS)

    @classmethod
    def memory_maze_3_levels(cls) -> "WorldModelSpec":
        """`memory_maze()` with a UNet of 3 levels (32, 64, 128 channels; 5.1 M parameters against 1.3 M): the
        larger model the Memory Maze card measures against the shipped one."""
        return replace(cls.memory_maze(), unet_channels=(32, 64, 128))

    @classmethod
    def mid(cls) -> "WorldModelSpec":
        return cls(image_size=256, vae_channels=(32, 64, 64, 64), latent_channels=4, unet_channels=(64, 128, 256),
                   unet_layers_per_block=2, unet_head_dim=8, norm_num_groups=32, text_hidden_size=128,
                   context_window=32, prediction_type="epsilon")

    @classmethod
    def modelscope(cls) -> "WorldModelSpec":
        """The UNet shape of ModelScope text-to-video (1.4 B parameters; 256x256 frames, 32x32 latents), for
        GPU benchmarks with random weights; a small VAE and text encoder (their cost is not what is measured)."""
        return cls(image_size=256, vae_channels=(32, 64, 64, 64), latent_channels=4,
                   unet_channels=(320, 640, 1280, 1280), unet_layers_per_block=2, unet_head_dim=64,
                   norm_num_groups=32, text_hidden_size=1024, context_window=16, prediction_type="epsilon")

    def to_dict(self) -> dict:
        return asdict(self)


def build_tokenizer(max_tokens: int = 16, extra_words: tuple[str, ...] = ()) -> CLIPTokenizer:
    """A real byte-level BPE `CLIPTokenizer` built offline from a generated vocabulary.

    Every byte is a token (so any text tokenizes), and each known word is merged into a single token,
    the way a trained CLIP vocabulary merges frequent words.
    """
    byte_chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for char in byte_chars:
        vocab.setdefault(char, len(vocab))
    for char in byte_chars:
        vocab.setdefault(char + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys((*ACTION_WORDS, *extra_words)):
        encoded = "".join(byte_chars[b] for b in word.encode("utf-8"))
        parts = list(encoded[:-1]) + [encoded[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            if merged not in vocab:
                merges.append((parts[0], parts[1]))
                vocab[merged] = len(vocab)
            parts = [merged] + parts[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_tokens)


def _bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP's reversible byte -> printable character table, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    extra = 0
    table = {}
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def build_pipeline(spec: WorldModelSpec | None = None, seed: int = 0) -> SlowFastVGenPipeline:
    """A complete `SlowFastVGenPipeline` with random weights, reproducible from `seed`."""
    spec = spec or WorldModelSpec.tiny()
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(spec.max_tokens, spec.extra_words)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=spec.text_hidden_size,
            intermediate_size=spec.text_hidden_size * 2,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=4,
            max_position_embeddings=spec.max_tokens,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    num_vae_blocks = len(spec.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * num_vae_blocks,
        up_block_types=("UpDecoderBlock2D",) * num_vae_blocks,
        block_out_channels=spec.vae_channels,
        latent_channels=spec.latent_channels,
        layers_per_block=1,
        norm_num_groups=spec.norm_num_groups,
        sample_size=spec.image_size,
    )
    num_unet_blocks = len(spec.unet_channels)
    latent_size = spec.image_size // 2 ** (num_vae_blocks - 1)
    unet = UNet3DConditionModel(
        sample_size=latent_size,
        in_channels=spec.latent_channels,
        out_channels=spec.latent_channels,
        down_block_types=("CrossAttnDownBlock3D",) * (num_unet_blocks - 1) + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (num_unet_blocks - 1),
        block_out_channels=spec.unet_channels,
        layers_per_block=spec.unet_layers_per_block,
        norm_num_groups=spec.norm_num_groups,
        cross_attention_dim=spec.text_hidden_size,
        attention_head_dim=spec.unet_head_dim,
    )
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=spec.prediction_type,
    )
    for model in (text_encoder, vae, unet):
        # Models built from configs start in training mode; from_pretrained gives eval mode. Inference
        # must not depend on how the pipeline was made (the VAE decodes differently in training mode),
        # and the training entrypoint switches the models it trains to train() itself.
        model.eval()
    return SlowFastVGenPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        context_window=spec.context_window,
    )
