"""The embedded default model: a small Llama with random weights, made on demand.

Tests, benchmarks and ``make serve`` need a real model that loads through
``mlx_lm.load`` without a network. This module writes one deterministically: the
same preset and seed give byte-identical files on every run (weights, config and
a byte-level BPE tokenizer trained on ``corpus.txt``). Its output is gibberish,
but every shape, special token and file an inference engine relies on is real.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.models.llama import Model, ModelArgs
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# Bump whenever the generator's output changes for reasons the cache name does
# not already capture (the corpus and the presets are hashed into it).
FORMAT_VERSION: Final = 3
DEFAULT_SEED: Final = 0
BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
ROLE_MARKERS: Final = ("<|system|>", "<|user|>", "<|assistant|>")
# The trainer numbers special tokens first, in this order: unk 0, bos 1, eos 2.
SPECIAL_TOKENS: Final = (UNK, BOS, EOS, PAD, *ROLE_MARKERS)
EOS_ID: Final = SPECIAL_TOKENS.index(EOS)
MODEL_FILES: Final = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)
# Zephyr-style turns ended by the eos token, so that a single stop id ends both
# plain completions and assistant turns.
CHAT_TEMPLATE: Final = (
    "{{ bos_token }}"
    # Tools as Hermes-style templates offer them: a system turn listing their
    # JSON definitions and how to call one.
    "{% if tools %}"
    "{{ '<|system|>\\nYou may call these tools:\\n<tools>' + (tools | tojson) + '</tools>\\n' }}"
    '{{ \'Call one as <tool_call>{"name": ..., "arguments": {...}}</tool_call>\' }}'
    "{{ eos_token + '\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('unsupported chat role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    # An earlier assistant turn's tool calls, as Hermes-style templates write them.
    "{% for call in message['tool_calls'] or [] %}"
    "{{ '<tool_call>' + (call['function'] | tojson) + '</tool_call>' }}"
    "{% endfor %}"
    "{{ eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
"""Roles as markers; ``tool`` turns and earlier tool calls are plain text (not special tokens)."""
_INIT_STD: Final = 0.02  # Llama's initializer_range


class DestinationExists(FileExistsError):
    """:func:`make_model` refused to replace what is at its destination.

    ``errno`` is ``ENOTEMPTY`` for a non-empty directory (``overwrite`` would
    replace it) and ``EEXIST`` for anything that is not a directory.
    """


@dataclass(frozen=True)
class ModelPreset:
    """The shape of one embedded model size (Llama ``config.json`` fields)."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int = 1024
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False

    def config(self) -> dict[str, Any]:
        """The ``config.json`` contents for this preset (``model_type: llama``)."""
        fields = asdict(self)
        del fields["name"]
        return {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            **fields,
            "bos_token_id": SPECIAL_TOKENS.index(BOS),
            "eos_token_id": EOS_ID,
            "pad_token_id": SPECIAL_TOKENS.index(PAD),
            "torch_dtype": "float32",
        }

    def model_args(self) -> ModelArgs:
        """The arguments of ``mlx_lm.models.llama.Model`` for this preset."""
        fields = asdict(self)
        del fields["name"]
        return ModelArgs(model_type="llama", **fields)

    @property
    def num_parameters(self) -> int:
        """The exact parameter count of a model with this shape."""
        head_dim = self.hidden_size // self.num_attention_heads
        q_and_o = 2 * self.hidden_size * self.num_attention_heads * head_dim
        k_and_v = 2 * self.hidden_size * self.num_key_value_heads * head_dim
        mlp = 3 * self.hidden_size * self.intermediate_size
        per_layer = q_and_o + k_and_v + mlp + 2 * self.hidden_size  # two RMSNorms
        embeddings = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embeddings
        return self.num_hidden_layers * per_layer + embeddings + head + self.hidden_size


PRESETS: Final = MappingProxyType(
    {
        "tiny": ModelPreset("tiny", 256, 4, 4, 2, 768),
        "small": ModelPreset("small", 512, 8, 8, 4, 1792),
    }
)


def preset(size: str) -> ModelPreset:
    """Return the preset called ``size``.

    Raises:
        ValueError: If there is no such preset; the message lists the choices.
    """
    try:
        return PRESETS[size]
    except KeyError:
        choices = ", ".join(PRESETS)
        raise ValueError(f"unknown model size {size!r} (choose from {choices})") from None


def make_model(
    dest: Path, size: str = "tiny", seed: int = DEFAULT_SEED, *, overwrite: bool = False
) -> Path:
    """Write the embedded model of ``size`` into ``dest``; return it as an absolute path.

    The files are built in a hidden sibling directory and renamed into place, so
    ``dest`` is either absent or complete, never half written.

    Args:
        dest: The model directory to create; its parents are created as needed.
        size: A key of :data:`PRESETS`.
        seed: Seeds the weights; the tokenizer does not depend on it.
        overwrite: Replace a non-empty ``dest`` instead of refusing.

    Raises:
        ValueError: If ``size`` is unknown or ``seed`` is not a 64-bit unsigned int.
        DestinationExists: If ``dest`` is a file, or non-empty and not ``overwrite``.
        OSError: If the files cannot be written there.
    """
    shape = preset(size)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), not {seed}")
    # Absolute, so that "." has a name and a parent; symlinks are left unresolved.
    dest = Path(os.path.abspath(Path(dest).expanduser()))
    if dest.exists() and not dest.is_dir():
        raise DestinationExists(errno.EEXIST, "exists and is not a directory", str(dest))
    if _is_non_empty_dir(dest) and not overwrite:
        raise DestinationExists(errno.ENOTEMPTY, "directory is not empty", str(dest))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        # mkdir's own wording ("File exists") hides that a parent is a file.
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(dest.parent)) from None
    # Not tempfile.mkdtemp: its 0700 mode would stick to the published model.
    staging = dest.with_name(f".{dest.name}.tmp-{secrets.token_hex(6)}")
    staging.mkdir()
    try:
        _write_model(staging, shape, seed)
        _install(staging, dest, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def default_model_dir(size: str = "tiny") -> Path:
    """Return the cached embedded model of ``size``, generating it on first use.

    The cache lives in ``$TROUPE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlx-troupe``,
    else ``~/.cache/mlx-troupe``. Its name carries :data:`FORMAT_VERSION` and a
    digest of the preset and corpus, so a changed generator never reuses stale
    files. Concurrent callers each build and race to rename; the loser discards
    its copy and returns the winner's.
    """
    shape = preset(size)
    dest = cache_dir() / "models" / f"embedded-{size}-v{FORMAT_VERSION}-{_digest(shape)}"
    if is_complete(dest):
        return dest
    try:
        # A directory the rename did not fill was damaged by hand: rebuild it.
        return make_model(dest, size, DEFAULT_SEED, overwrite=dest.exists())
    except DestinationExists:
        if is_complete(dest):
            return dest
        raise


def cache_dir() -> Path:
    """The mlx-troupe cache directory (not created here)."""
    if explicit := os.environ.get("TROUPE_CACHE_DIR"):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mlx-troupe"


def is_complete(path: Path) -> bool:
    """Whether ``path`` holds every file :func:`make_model` writes."""
    return all((path / name).is_file() for name in MODEL_FILES)


def corpus_text() -> str:
    """The tokenizer's training text, shipped next to this module."""
    return resources.files(__package__).joinpath("corpus.txt").read_text(encoding="utf-8")


def _digest(shape: ModelPreset) -> str:
    recipe = json.dumps([FORMAT_VERSION, asdict(shape), corpus_text()], sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def _is_non_empty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _write_model(dest: Path, shape: ModelPreset, seed: int) -> None:
    """Write every file of the model into the existing directory ``dest``."""
    tokenizer = train_tokenizer(shape.vocab_size)
    tokenizer.save(str(dest / "tokenizer.json"))
    _write_json(dest / "tokenizer_config.json", _tokenizer_config(shape))
    _write_json(dest / "config.json", shape.config())
    # mlx_lm takes its stop ids from here when present, as for hub checkpoints.
    generation = {"bos_token_id": SPECIAL_TOKENS.index(BOS), "eos_token_id": EOS_ID}
    _write_json(dest / "generation_config.json", generation)
    mx.save_safetensors(
        str(dest / "model.safetensors"), random_weights(shape, seed), metadata={"format": "mlx"}
    )
    # The rename that publishes the directory must not outrun its contents.
    for file in dest.iterdir():
        with file.open("rb") as handle:
            os.fsync(handle.fileno())


def train_tokenizer(vocab_size: int) -> Tokenizer:
    """Train the byte-level BPE tokenizer on the corpus; deterministic.

    Byte-level means every string encodes (no ``<unk>`` in practice) and decodes
    back exactly. The trainer breaks ties between equally frequent pairs by
    token id, so the result does not depend on hash order or thread count.

    Raises:
        RuntimeError: If the corpus is too small to reach ``vocab_size``.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # Keep offsets untrimmed and add no bos: decode(encode(text)) == text.
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_text().splitlines(keepends=True), trainer)
    if (got := tokenizer.get_vocab_size()) != vocab_size:
        raise RuntimeError(f"corpus.txt yields {got} tokens, the preset needs {vocab_size}")
    return tokenizer


def random_weights(shape: ModelPreset, seed: int) -> dict[str, mx.array]:
    """Weights for ``mlx_lm.models.llama.Model`` of ``shape``, drawn from ``seed``.

    The parameter names and shapes come from mlx-lm's own Llama, so the file
    always matches what ``mlx_lm.load`` expects. Values do not come from the
    module initializers (which draw from MLX's global generator): every tensor
    gets its own key split from ``seed``, in name order, so the bytes depend on
    the seed alone, whatever the global generator's state.
    """
    # Constructing the module only records lazy initializers; they never run.
    template = Model(shape.model_args())
    flat: dict[str, mx.array] = {}
    tree_flatten(template.parameters(), destination=flat)
    shapes = {name: value.shape for name, value in flat.items()}
    names = sorted(shapes)
    keys = mx.random.split(mx.random.key(seed), len(names))
    weights: dict[str, mx.array] = {}
    for index, name in enumerate(names):
        dims = shapes[name]
        if name.endswith("norm.weight"):
            weights[name] = mx.ones(dims, dtype=mx.float32)
        else:
            noise = mx.random.normal(dims, dtype=mx.float32, key=keys[index])
            weights[name] = noise * _INIT_STD
    mx.eval(weights)
    return weights


def _tokenizer_config(shape: ModelPreset) -> dict[str, Any]:
    return {
        # transformers 5 maps this to its TokenizersBackend, which uses
        # tokenizer.json as written (LlamaTokenizer would impose Metaspace).
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": PAD,
        "additional_special_tokens": list(ROLE_MARKERS),
        "model_max_length": shape.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        "chat_template": CHAT_TEMPLATE,
        # mlx-lm's parser for <tool_call>{"name": ..., "arguments": ...}</tool_call>.
        "tool_parser_type": "json_tools",
    }


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _install(staging: Path, dest: Path, *, overwrite: bool) -> None:
    """Publish ``staging`` as ``dest`` with one rename.

    ``rename`` atomically replaces a missing or empty ``dest``. A non-empty one
    (overwrite) is first moved aside and removed after the swap.

    Raises:
        DestinationExists: If ``dest`` became non-empty meanwhile and not ``overwrite``.
    """
    aside: Path | None = None
    if overwrite and _is_non_empty_dir(dest):
        aside = dest.with_name(f"{staging.name}.old")
        dest.rename(aside)
    try:
        staging.rename(dest)
    except OSError as exc:
        if aside is not None:
            try:
                aside.rename(dest)
            except OSError:  # someone else filled dest meanwhile: theirs stays
                shutil.rmtree(aside, ignore_errors=True)
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise DestinationExists(errno.ENOTEMPTY, "directory is not empty", str(dest)) from exc
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
