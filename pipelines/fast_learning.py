"""The fast learner's update, paper Algorithm 1 (a), lines 11-14: train Temp-LoRA on the previous chunk ⊕
the new one and return the new memory.

`update_memory` reads top to bottom beside the paper. Beside it: what an update learns from a clip
(`memory_examples`, the loss), replay of earlier clips, rollback on a non-finite step, and gradient
checkpointing of the UNet during the update.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import replace
from typing import Callable, Iterator, Mapping, NamedTuple

import torch
import torch.nn.functional as F

from .episodic_memory import EpisodicMemory, UpdateClip
from .lora_layers import memory_applied
from .memory_settings import TempLoRAConfig


class DenoisingExample(NamedTuple):
    """One denoising problem an update learns: `target` frames denoised after the clean `context` frames,
    with `text`. Made from an `UpdateClip` by `memory_examples` (one or more per clip)."""

    context: torch.Tensor
    target: torch.Tensor
    text: str


def update_memory(
    unet: torch.nn.Module,
    noise_scheduler,
    memory: EpisodicMemory,
    clip: UpdateClip,
    text_embeds: Mapping[str, torch.Tensor],
    action: str | None = None,
    generator: torch.Generator | None = None,
    callback_on_step_end: Callable[[int, int], None] | None = None,
) -> EpisodicMemory:
    """Algorithm 1 (a), lines 11-14: train Temp-LoRA on `clip` (and, with replay, on earlier clips of
    `memory`); return the new memory.

    `text_embeds` maps every text of `clip` and of the memory's clips to its text-encoder states (1,L,D);
    the paper's update uses the null text only. `action` is recorded in the memory.
    `callback_on_step_end(step, steps_per_update)` is called after every optimizer step (progress bars;
    raising from it, e.g. to cancel, abandons the update and leaves `memory` as it was).

    Runs outside inference mode with grad enabled (ComfyUI runs nodes under `torch.inference_mode()`),
    touches neither the inputs nor `memory`, and on a NaN or infinite loss returns `memory` unchanged.
    """
    config = memory.config
    generator = _cpu_generator(generator)
    if config.steps_per_update == 0:  # no Temp-LoRA to train: a memory of its panorama only
        return _remembered(memory, clip, action, memory.lora, memory.optimizer_state)
    with _lora_in_training(unet, memory, clip) as parameters:
        # Inside the block, outside inference mode: copies autograd may save, so that neither the inputs
        # (ComfyUI's are inference tensors) nor the memory can be touched.
        embeds = {text: e.detach().clone() for text, e in text_embeds.items()}
        # Line 11: X_i = X_i ⊕ Y_i. `clip` is the previous chunk followed by the new one; what is learned
        # of it (the whole clip for the paper's objective) are its examples.
        current = memory_examples(_copied(clip, like=clip.latents), config)
        replayed = _replayed_examples(memory, clip)
        optimizer = _adam(parameters, memory)  # Θ_i: the memory's LoRA, with its Adam moments
        for step in range(config.steps_per_update):
            examples = _step_examples(current, replayed, memory, generator)
            # Lines 12-13: sample noise on the whole X_i and calculate the loss on the whole X_i.
            loss = _examples_loss(unet, noise_scheduler, embeds, examples, generator)
            if not torch.isfinite(loss):
                return _rolled_back(memory, f"Temp-LoRA update skipped: the loss was {loss.item()}; the memory was "
                                            "rolled back to its last good state and generation carries on.")
            # Line 14: Θ_{i+1} <- Θ_i - α ∇_Θ Loss (with Adam, appendix D.1).
            _gradient_step(optimizer, loss, parameters)
            if callback_on_step_end is not None:
                callback_on_step_end(step, config.steps_per_update)
        # The new memory stays on the model's device: no host round trip per chunk (`EpisodicMemory.to`).
        lora = {key: p.detach().clone() for key, p in parameters.items()}
        if _any_non_finite(lora):
            return _rolled_back(memory, "Temp-LoRA update produced non-finite weights; the memory was rolled back.")
        return _remembered(memory, clip, action, lora, _adam_moments(optimizer, parameters))


# ---------------------------------------------------------------------------------------------------
# What an update learns


def memory_examples(clip: UpdateClip, config: TempLoRAConfig) -> list[DenoisingExample]:
    """What one update learns from `clip`, forward play first (see `TempLoRAConfig.direction`)."""
    latents, new_frames = clip.latents, clip.new_frames
    previous, new = latents[:, :, :-new_frames], latents[:, :, -new_frames:]
    if config.objective == "trajectory":
        forward = [DenoisingExample(latents[:, :, :0], latents, clip.text)]
        backward = [DenoisingExample(latents[:, :, :0], latents.flip(2), clip.reverse_text)]
    else:
        way_back = latents.flip(2)[:, :, 1:]
        forward = [DenoisingExample(previous, new, clip.text)]
        backward = [DenoisingExample(new, way_back[:, :, :new_frames], clip.reverse_text),
                    DenoisingExample(way_back[:, :, :new_frames], way_back[:, :, new_frames:], clip.reverse_text)]
    examples = {"forward": forward, "backward": backward, "both": forward + backward}[config.direction]
    return [example for example in examples if example.target.shape[2]]


def temp_lora_loss(unet, noise_scheduler, context: torch.Tensor, target: torch.Tensor, text_embeds: torch.Tensor,
                   timesteps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Denoising loss on `target` after the clean `context` frames (none in the paper's update)."""
    noisy = noise_scheduler.add_noise(target, noise, timesteps)
    prediction = unet(torch.cat([context, noisy], dim=2), timesteps, encoder_hidden_states=text_embeds).sample
    prediction = prediction[:, :, context.shape[2]:]
    return F.mse_loss(prediction.float(), denoising_target(noise_scheduler, target, noise, timesteps).float())


def denoising_target(noise_scheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict under the scheduler's `prediction_type` (epsilon, v or the sample)."""
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(clean, noise, timesteps)
    return clean


def _examples_loss(unet, noise_scheduler, embeds, examples, generator) -> torch.Tensor:
    """Mean loss of `examples`, those of one shape run through the UNet as one batch (each its own timestep)."""
    batches: dict[tuple[int, int], list[DenoisingExample]] = {}
    for example in examples:
        batches.setdefault((example.context.shape[2], example.target.shape[2]), []).append(example)
    total = 0.0
    for batch in batches.values():
        context = torch.cat([e.context for e in batch])
        target = torch.cat([e.target for e in batch])
        text_embeds = torch.cat([embeds[e.text].expand(e.target.shape[0], -1, -1) for e in batch])
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (target.shape[0],),
                                  generator=generator).to(target.device)
        noise = torch.randn(target.shape, generator=generator, dtype=torch.float32).to(target.device, target.dtype)
        loss = temp_lora_loss(unet, noise_scheduler, context, target, text_embeds, timesteps, noise)
        total = total + loss * len(batch)
    return total / len(examples)


# ---------------------------------------------------------------------------------------------------
# Replay: earlier clips learned again (`TempLoRAConfig.replay`, and `local=False`)


def _copied(clip: UpdateClip, like: torch.Tensor) -> UpdateClip:
    """A copy of `clip` with its latents on the device and in the dtype of `like`."""
    return clip._replace(latents=clip.latents.detach().to(like.device, like.dtype, copy=True))


def _replayed_examples(memory: EpisodicMemory, clip: UpdateClip) -> Callable[[int], list[DenoisingExample]]:
    """The examples of the memory's clip `index`, copied to the device once, when a step first draws it."""

    @functools.cache
    def replayed(index: int) -> list[DenoisingExample]:
        return memory_examples(_copied(memory.clips[index], like=clip.latents), memory.config)

    return replayed


def _step_examples(current: list[DenoisingExample], replayed: Callable[[int], list[DenoisingExample]],
                   memory: EpisodicMemory, generator: torch.Generator | None) -> list[DenoisingExample]:
    """What one optimizer step learns: the new clip (with `local=False`, one clip drawn from the whole episode,
    the new one as likely as any other), and `replay` earlier clips drawn at random."""
    config = memory.config
    if config.local:
        examples = list(current)
    else:
        drawn = int(torch.randint(0, len(memory.clips) + 1, (1,), generator=generator))
        examples = list(current) if drawn == len(memory.clips) else list(replayed(drawn))
    if memory.clips:
        for index in torch.randint(0, len(memory.clips), (config.replay,), generator=generator).tolist():
            examples += replayed(index)
    return examples


# ---------------------------------------------------------------------------------------------------
# The optimizer, the new memory, and rollback


def _cpu_generator(generator: torch.Generator | list[torch.Generator] | None) -> torch.Generator | None:
    """The generator timesteps and noise are drawn from, on the CPU (bit-identical on every device)."""
    if isinstance(generator, (list, tuple)):
        generator = generator[0] if generator else None
    if generator is not None and generator.device.type != "cpu":
        # A device generator cannot draw on the CPU: derive a CPU one from it, reproducibly.
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator,
                                                                    device=generator.device).item()))
    return generator


def _adam(parameters: dict[str, torch.nn.Parameter], memory: EpisodicMemory) -> torch.optim.Adam:
    """Adam over the LoRA parameters, its moments restored from the memory: one optimizer over the episode."""
    optimizer = torch.optim.Adam(list(parameters.values()), lr=memory.config.learning_rate)
    if memory.optimizer_state:
        for key, parameter in parameters.items():
            optimizer.state[parameter] = {
                "step": torch.tensor(float(memory.optimizer_steps)),
                "exp_avg": memory.optimizer_state[f"{key}.exp_avg"].to(parameter.device).clone(),
                "exp_avg_sq": memory.optimizer_state[f"{key}.exp_avg_sq"].to(parameter.device).clone(),
            }
    return optimizer


def _gradient_step(optimizer: torch.optim.Adam, loss: torch.Tensor, parameters: dict[str, torch.nn.Parameter]) -> None:
    trainable = list(parameters.values())
    for parameter, gradient in zip(trainable, torch.autograd.grad(loss, trainable)):
        parameter.grad = gradient
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _adam_moments(optimizer: torch.optim.Adam, parameters: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    moments = {}
    for key, parameter in parameters.items():
        state = optimizer.state[parameter]
        moments[f"{key}.exp_avg"] = state["exp_avg"].detach().clone()
        moments[f"{key}.exp_avg_sq"] = state["exp_avg_sq"].detach().clone()
    return moments


def _any_non_finite(tensors: Mapping[str, torch.Tensor]) -> bool:
    """Whether any of `tensors` holds NaN or infinity (one device sync for all of them)."""
    return not bool(torch.stack([torch.isfinite(t).all() for t in tensors.values()]).all())


def _rolled_back(memory: EpisodicMemory, message: str) -> EpisodicMemory:
    """The memory as it was before a failed update, with a warning saying so; the episode carries on."""
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    return memory


def _remembered(memory: EpisodicMemory, clip: UpdateClip, action: str | None, lora: Mapping[str, torch.Tensor],
                optimizer_state: Mapping[str, torch.Tensor]) -> EpisodicMemory:
    """The new memory after an update on `clip`, keeping the clip where replay will need it."""
    config = memory.config
    keeps_clips = config.replay or not config.local
    kept = clip._replace(latents=clip.latents.detach().clone()) if keeps_clips else None
    return replace(
        memory,
        lora=dict(lora),
        optimizer_state=dict(optimizer_state),
        optimizer_steps=memory.optimizer_steps + config.steps_per_update,
        num_updates=memory.num_updates + 1,
        frames_seen=memory.frames_seen + clip.new_frames,
        actions=memory.actions + ((action,) if action is not None else ()),
        clips=memory.clips + (kept,) if kept is not None else (),
    )


# ---------------------------------------------------------------------------------------------------
# Gradient checkpointing during the update (`TempLoRAConfig.gradient_checkpointing`)


@contextlib.contextmanager
def _lora_in_training(unet: torch.nn.Module, memory: EpisodicMemory,
                      clip: UpdateClip) -> Iterator[dict[str, torch.nn.Parameter]]:
    """The memory's LoRA layers in the UNet, trainable, with grad on and inference mode off, and the UNet
    checkpointed where the update needs it; the parameters frozen and their gradients dropped afterwards."""
    checkpointing = memory.config.gradient_checkpointing
    if checkpointing is None:
        checkpointing = needs_checkpointing(unet, clip, memory.config, clip.latents.device)
    checkpointed = _checkpointed(unet) if checkpointing else contextlib.nullcontext()
    with torch.inference_mode(False), torch.enable_grad(), memory_applied(unet, memory) as parameters, checkpointed:
        for parameter in parameters.values():
            parameter.requires_grad_(True)
        try:
            yield parameters
        finally:
            for parameter in parameters.values():
                parameter.requires_grad_(False)
                parameter.grad = None


# Floats a UNet3D keeps for its backward pass per latent element (frame x height x width) per channel of
# its blocks (sum of `block_out_channels`), with the LoRA trainable and the base frozen: above what was
# measured on the tiny, shipped and mid-size models (docs/benchmarks.md, "Where the time of a chunk went").
_SAVED_FLOATS_PER_ELEMENT_CHANNEL = 200


def update_activation_bytes(unet: torch.nn.Module, clip: UpdateClip, config: TempLoRAConfig) -> int:
    """Estimated bytes of activations an update without gradient checkpointing keeps, per optimizer step."""
    frames = sum(e.context.shape[2] + e.target.shape[2] for e in memory_examples(clip, config))
    frames *= 1 + config.replay
    batch, _, _, height, width = clip.latents.shape
    channels = sum(unet.config.block_out_channels)
    element_size = torch.finfo(clip.latents.dtype).bits // 8 if clip.latents.is_floating_point() else 4
    return _SAVED_FLOATS_PER_ELEMENT_CHANNEL * batch * frames * height * width * channels * element_size


def needs_checkpointing(unet: torch.nn.Module, clip: UpdateClip, config: TempLoRAConfig,
                        device: torch.device) -> bool:
    """The automatic choice: checkpoint when the update's activations would take over half the free memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        import psutil

        free = psutil.virtual_memory().available
    return update_activation_bytes(unet, clip, config) > free // 2


# The UNet3D layers whose activations the update recomputes in the backward pass instead of storing them.
_CHECKPOINTED_LAYERS = ("Transformer2DModel", "TransformerTemporalModel", "ResnetBlock2D", "TemporalConvLayer")


@contextlib.contextmanager
def _checkpointed(unet: torch.nn.Module) -> Iterator[None]:
    """Gradient checkpointing of every attention / resnet / temporal-conv layer of the UNet, for the block."""
    from torch.utils.checkpoint import checkpoint

    wrapped = []
    for module in unet.modules():
        if type(module).__name__ in _CHECKPOINTED_LAYERS:
            previous = module.__dict__.get("forward")  # an accelerate hook may already sit there
            forward = module.forward
            module.forward = functools.partial(_checkpoint_call, checkpoint, forward)
            wrapped.append((module, previous))
    try:
        yield
    finally:
        for module, previous in wrapped:
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def _checkpoint_call(checkpoint, forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
