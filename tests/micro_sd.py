"""A micro Stable Diffusion pipeline built from configs: the offline stand-in for the teacher.

``build_micro_sd(path)`` writes a ``StableDiffusionPipeline`` directory (unet, vae, text_encoder,
tokenizer, scheduler) whose every component is tiny and randomly initialised, so tests of the
distillation math, the consistency sampler and the model registry run in seconds on a CPU with no
download. The tokenizer is a byte-level BPE trained here with the ``tokenizers`` library in the
format ``CLIPTokenizer`` reads (``vocab.json`` + ``merges.txt``, end-of-word suffix ``</w>``,
CLIP's special tokens).
"""

from __future__ import annotations

from pathlib import Path

import torch

PROMPTS = [
    "chest x-ray of a human chest, cardiomegaly",
    "chest x-ray of a human chest, healthy",
    "brain mri of a human head, glioma",
    "brain mri of a human head, healthy",
    "knee ct of a dog knee, fracture",
    "abdomen ultrasound of a cat abdomen, normal",
]

CROSS_DIM = 32
MAX_LENGTH = 16
IMAGE_SIZE = 16  # pixels; the VAE halves it, so latents are 4 x 8 x 8


def micro_unet(**overrides):
    """A two-level UNet2DConditionModel (block_out_channels (16, 32), sample_size 8)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    config = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    config.update(overrides)
    return UNet2DConditionModel(**config)


def micro_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )


def train_micro_tokenizer(out_dir: Path, vocab_size: int = 300):
    """Train a tiny CLIP-style BPE on the test prompts and load it as a ``CLIPTokenizer``."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    # The same normaliser and pre-tokeniser as transformers' CLIPTokenizer, so the trained merges
    # apply to the same pieces at encode time.
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(
                    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
                ),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(PROMPTS * 4, trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe.model.save(str(out_dir))  # vocab.json + merges.txt
    return CLIPTokenizer(
        vocab=str(out_dir / "vocab.json"),
        merges=str(out_dir / "merges.txt"),
        model_max_length=MAX_LENGTH,
    )


def micro_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(2)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=CROSS_DIM,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


def micro_scheduler():
    """The teacher's noise schedule: SD's scaled_linear betas 0.00085..0.012 over 1000 steps."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )


def build_micro_sd(path: Path) -> Path:
    """Write a micro ``StableDiffusionPipeline`` directory at ``path`` and return it."""
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    tokenizer = train_micro_tokenizer(path.parent / f"{path.name}-bpe")
    pipe = StableDiffusionPipeline(
        vae=micro_vae(),
        text_encoder=micro_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        unet=micro_unet(),
        scheduler=micro_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_micro_lcm(root: Path, k: int = 20, w_embedding_dim: int = 16) -> Path:
    """A micro teacher at ``root/teacher`` and its (untrained) consistency pipeline at
    ``root/llcm``: the student with a small random guidance projection, so w matters."""
    from diffusers import UNet2DConditionModel

    from ops.distill.consistency import make_student
    from ops.distill.sampling import save_consistency_pipeline

    root = Path(root)
    teacher_dir = build_micro_sd(root / "teacher")
    teacher = UNet2DConditionModel.from_pretrained(teacher_dir / "unet")
    student = make_student(teacher, w_embedding_dim).eval()
    g = torch.Generator().manual_seed(0)
    torch.nn.init.normal_(student.time_embedding.cond_proj.weight, std=0.02, generator=g)
    return save_consistency_pipeline(
        student, teacher_dir, root / "llcm", k, metadata={"solver": "leapfrog"}
    )


_REGISTRY: dict = {}


def micro_registry(tmp_path_factory) -> dict:
    """One sqlite MLflow store per test session (creating one takes seconds): the micro
    consistency pipeline registered as ``llcm`` v1 (champion, metric fid) and v2.

    Returns {"root", "layout", "params", "model_dir", "v1", "v2"}; ``root/data`` is the data dir.
    """
    if _REGISTRY:
        from ops.tracking.mlflow_setup import setup_mlflow

        setup_mlflow(_REGISTRY["layout"], _REGISTRY["params"])  # another test may have moved it
        return _REGISTRY
    import mlflow.utils.environment as mlflow_env

    from ops.config import load_params
    from ops.distill.registry import register_model
    from ops.layout import DataLayout

    root = tmp_path_factory.mktemp("registry")
    model_dir = build_micro_lcm(root)
    layout = DataLayout.from_env(root / "data")
    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml", preset="micro")
    # MLflow checks the pip requirements against the environment by scanning every installed
    # distribution (~8 s, once); the check only warns, so tests skip it.
    check = mlflow_env.warn_dependency_requirement_mismatches
    mlflow_env.warn_dependency_requirement_mismatches = lambda reqs: None
    try:
        v1 = register_model(model_dir, "llcm", params, layout, {"fid": 12.5}, set_champion=True)
        v2 = register_model(model_dir, "llcm", params, layout)
    finally:
        mlflow_env.warn_dependency_requirement_mismatches = check
    _REGISTRY.update(root=root, layout=layout, params=params, model_dir=model_dir, v1=v1, v2=v2)
    return _REGISTRY


def build_micro_pcm(root: Path, k: int = 20, phases: int = 4) -> Path:
    """The micro student of :func:`build_micro_lcm`, saved again as a phased (PCM) student at
    ``root/llcm_pcm``: a StableDiffusionPipeline with a TCDScheduler."""
    from ops.distill.sampling import load_consistency_pipeline, save_consistency_pipeline

    root = Path(root)
    pipe = load_consistency_pipeline(build_micro_lcm(root, k), device="cpu")
    return save_consistency_pipeline(
        pipe.unet, root / "teacher", root / "llcm_pcm", k, phases=phases,
        metadata={"solver": "leapfrog"},
    )  # fmt: skip
