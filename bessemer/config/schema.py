"""The typed config tree: one dataclass per section, each field with a default a new user can run with."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelSection:
    """Which model: a preset name plus field overrides, or the config of a checkpoint to start from."""

    preset: str = "tiny"
    # Overrides of `bessemer.models.config.ModelConfig` fields, e.g. {"n_layers": 4}; validated against it.
    overrides: dict = field(default_factory=dict)


@dataclass
class DataSection:
    """Prepared datasets (path prefixes of .bin/.idx pairs) and how they are packed and mixed."""

    paths: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)  # empty: by size
    split: str = "98,1,1"  # train,valid,test ratio of documents
    tokenizer: str = ""  # folder; default: the one recorded in the dataset's meta.json
    reset_positions: bool = False  # restart positions and attention at document boundaries


@dataclass
class ParallelSection:
    """Device layout; the product dp_replicate x dp_shard x tp x pp x cp equals the world size."""

    dp_replicate: int = 1
    dp_shard: int = -1  # -1: whatever the other dimensions leave
    tp: int = 1
    sequence_parallel: bool = True
    pp: int = 1
    pp_schedule: str = "1F1B"  # GPipe, 1F1B, Interleaved1F1B
    pp_microbatches: int = 0  # 0: pp x stages per rank
    pp_layers: list[int] = field(default_factory=list)  # layers per stage; empty: split evenly
    pp_stages_per_rank: int = 1
    cp: int = 1
    reshard_after_forward: bool = True  # False: ZeRO-2-like, keep gathered params until backward
    cpu_offload: bool = False
    param_dtype: str = (
        "auto"  # FSDP2 mixed precision: params cast for compute; auto: train.dtype's compute dtype
    )
    reduce_dtype: str = "float32"
    activation_checkpoint: str = (
        "none"  # none, full (every block), selective (saves matmul/attention outputs)
    )
    compile: bool = False
    loss_parallel: bool = True  # with tp > 1: cross-entropy on vocab-sharded logits (never gathers them)
    timeout_s: int = 600  # process-group timeout: a hung or dead rank fails the job after this long


@dataclass
class OptimSection:
    name: str = "adamw"
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    implementation: str = "auto"  # auto (fused on CUDA, foreach elsewhere), fused, foreach, for-loop


@dataclass
class ScheduleSection:
    warmup_steps: int = 100
    decay: str = "cosine"  # cosine, linear, constant, wsd (warmup-stable-decay)
    min_lr_ratio: float = 0.1
    decay_steps: int = (
        0  # cosine/linear: the step the decay ends at (0: train.steps); wsd: the final decay's length
    )


@dataclass
class TrainSection:
    out_dir: str = "runs/default"
    steps: int = 1000
    seq_len: int = 2048
    micro_batch_size: int = 1
    global_batch_size: int = 0  # sequences per optimizer step; 0: micro_batch_size x data-parallel size
    grad_clip: float = 1.0
    seed: int = 1234
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; float32; bfloat16
    device: str = "auto"
    finetune: str = ""  # checkpoint whose weights start training, with a fresh optimizer and schedule
    nan_policy: str = "stop"  # stop, skip


@dataclass
class CheckpointSection:
    interval: int = 500
    keep: int = 3  # newest step dirs kept; 0 keeps all
    resume: bool = False
    overwrite: bool = False  # start over in a train.out_dir that holds checkpoints (removes its step dirs)
    async_save: bool = False  # write shards in the background (torch.distributed.checkpoint.async_save)


@dataclass
class LogSection:
    interval: int = 1
    console: bool = True
    jsonl: bool = True
    tensorboard: bool = True


@dataclass
class GenerateSection:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    template: str = ""  # default: the checkpoint's own
    seed: int = 0
    # how the model runs (generate, chat and serve all read these from [generate])
    device: str = ""  # default: cuda when there is one
    dtype: str = ""  # default: bfloat16 on GPU, float32 on CPU
    compile: bool = False  # torch.compile the decode step
    quantize: str = ""  # "int8": weight-only int8 per output channel


@dataclass
class ServeSection:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str = ""
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 4096
    max_tokens: int = 1024
    max_queue: int = 64
    max_batch: int = 8
    allowed_hosts: list[str] = field(default_factory=list)  # Host names; empty: the bound address; "*": any
    cors_origins: list[str] = field(default_factory=list)  # web origins allowed to call it; empty: none
    max_connections: int = 256  # open connections; more are answered 429
    header_timeout_s: float = 10.0  # a client must send its request headers within this
    kv_blocks: int = 0  # KV-cache blocks of 16 positions; 0: max_batch x the context each request may use
    prefix_cache: bool = True  # share cached blocks of an identical prompt prefix between requests


@dataclass
class EvalSection:
    tasks: list[str] = field(default_factory=lambda: ["mmlu"])
    shots: int = 5
    data: str = ""
    batch_size: int = 8


@dataclass
class LoRASection:
    """Low-rank adapters on a frozen base (bessemer.tune.lora); rank 0 trains every weight instead."""

    rank: int = 0
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o"])  # q k v o gate up down
    modules_to_save: list[str] = field(default_factory=list)  # trained in full and saved: embeddings, head
    base_dtype: str = "float32"  # the frozen base's storage and compute dtype: float32 or bfloat16


@dataclass
class DPOSection:
    """Preference optimisation on a `prepare --handler preference` dataset (bessemer.tune.dpo)."""

    enabled: bool = False
    beta: float = 0.1
    loss: str = "sigmoid"  # sigmoid, ipo, hinge
    label_smoothing: float = 0.0  # sigmoid only
    reference: str = "frozen"  # the starting model (with LoRA: the base, adapters off); or "precomputed"


@dataclass
class JobConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    generate: GenerateSection = field(default_factory=GenerateSection)
    serve: ServeSection = field(default_factory=ServeSection)
    eval: EvalSection = field(default_factory=EvalSection)
    lora: LoRASection = field(default_factory=LoRASection)
    dpo: DPOSection = field(default_factory=DPOSection)
