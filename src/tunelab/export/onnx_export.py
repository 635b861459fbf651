"""Export a classify run as an ONNX graph that onnxruntime + tokenizers run without tunelab or torch.

The graph is the model tunelab itself runs for the run (its pooling, its head, the method merged in
where the method merges, an adapter's bottlenecks kept where it does not), wrapped so it returns
both ``logits`` (B, L) and ``probabilities`` = softmax(logits) (B, L). Inputs: ``input_ids`` and
``attention_mask`` (B, T) int64, batch and sequence dynamic. Next to ``model.onnx`` the folder holds
the run's tokenizer (its ``tokenizer.json`` set to truncate at the run's max_length and right-pad,
as tunelab does) and ``classifier.json`` (labels in index order, max_length, input/output names).
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from ..core.errors import TunelabError
from ..core.lazy import np, torch
from ..methods import METHODS
from ..models import CAUSAL_LM
from ..runs.open import RunInfo, load, open_run
from .output import check_new_output, writing

MODEL_FILE, TOKENIZER_FILE, INFO_FILE = "model.onnx", "tokenizer.json", "classifier.json"
INPUTS, OUTPUTS = ("input_ids", "attention_mask"), ("logits", "probabilities")
TOLERANCE = 1e-4  # onnxruntime vs PyTorch, on probabilities and logits (float32 kernels differ in the last bits)
# Texts of different lengths (one past any max_length) so the check sees padding, truncation and a lone row.
PROBE = ["tunelab export: does the ONNX graph reproduce the run?", "ok",
         "A longer message, WIN a FREE prize now!!! " * 40]


def export(run_dir: Path, out_dir: Path, options) -> Path:
    """``tunelab export --format onnx``: a classify run as model.onnx + tokenizer + classifier.json."""
    options.refuse_unused("onnx")
    return export_onnx(run_dir, out_dir)


def export_onnx(run_dir: str | Path, out_dir: str | Path) -> Path:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    info = open_run(run_dir, "export")
    _refuse_unsupported(info)
    check_new_output(out_dir)
    from ..core import console
    from ..models.classifier import family
    from ..training.progress import library_output

    with library_output(console.level()):  # no "Loading weights" bars or deprecation warnings
        loaded = load(run_dir)
        merge = getattr(METHODS[info.config.method.name], "merge", None)
        model = merge(loaded.model) if merge is not None else loaded.model  # adapter: its hooks stay in the graph
        model = model.eval().to("cpu", torch.float32)  # what onnxruntime's CPU kernels run (a bf16 run widens)
        family(model)  # not a classifier tunelab knows how to pool: a one-line error, nothing written
        graph = _ProbabilityGraph(model)
        with writing(out_dir):
            _save_graph(graph, loaded.tokenizer, out_dir / MODEL_FILE, run_dir)
            _save_tokenizer(loaded.tokenizer, out_dir, info.config.train.max_length, run_dir)
            (out_dir / INFO_FILE).write_text(json.dumps(_metadata(info, model), indent=2) + "\n")
            check_reproduces(graph, loaded.tokenizer, out_dir, info.config.train.max_length, run_dir)
    return out_dir


def _refuse_unsupported(info: RunInfo) -> None:
    """Everything ONNX export cannot write, refused before any model is loaded."""
    path = info.path
    if info.baseline:
        raise TunelabError(f"export: {path} is {info.describe}; it has no trained model to export")
    if info.model_kind == CAUSAL_LM:
        raise TunelabError(f"export: {path} is {info.describe} (a causal LM); --format onnx writes classify runs, "
                           "use --format gguf for causal LMs")
    if info.stage_name != "classify":
        # A reward model's input is a prompt + response pair in tunelab's own encoding (the chat template,
        # the response keeping half the length budget), which tokenizers alone cannot reproduce.
        raise TunelabError(f"export: {path} is {info.describe}; --format onnx writes classify runs only (a reward "
                           "model scores prompt+response pairs in tunelab's own encoding; use --format safetensors)")
    name = info.config.method.name
    reason = getattr(METHODS[name], "ONNX_UNSUPPORTED", None)
    if reason:
        raise TunelabError(f"export: run {path} uses method '{name}', which --format onnx cannot export ({reason}); "
                           "use it through tunelab.load")


class _ProbabilityGraph(torch.nn.Module):
    """The run's classifier as the exported graph sees it: (ids, mask) -> (logits, softmax(logits))."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):  # (B, T), (B, T) -> (B, L), (B, L)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        return logits, torch.softmax(logits, dim=-1)


def _padded(tokenizer, texts: list[str], max_length: int):
    from ..data.collate import pad_right
    from ..inference.classify import encode_texts

    return pad_right(encode_texts(tokenizer, texts, max_length), tokenizer.pad_token_id)


def _save_graph(graph, tokenizer, file: Path, run_dir: Path) -> None:
    # Example input: two rows of different lengths, so neither axis is specialised to 1 and the
    # attention mask carries padding while torch.export traces.
    example = _padded(tokenizer, PROBE[:2], 32)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    large = sum(p.numel() * p.element_size() for p in graph.parameters()) > 1_800_000_000  # protobuf's 2 GB cap
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)  # "torchvision is not installed": its ops are not ours to export
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # torch.export notes that MaskedPooler keeps the mask as an attribute: intended, not an error.
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, example, input_names=list(INPUTS), output_names=list(OUTPUTS),
                                        dynamic_shapes=dynamic, dynamo=True, verbose=False)
        program.save(str(file), external_data=large)
    except Exception as exc:  # the exporter's own errors are long; one line says what failed
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise TunelabError(f"export: torch.onnx could not export run {run_dir} ({type(exc).__name__}: {first})") from None
    finally:
        registry_log.setLevel(level)


def _save_tokenizer(tokenizer, out_dir: Path, max_length: int, run_dir: Path) -> None:
    """The run's tokenizer files; tokenizer.json truncates and pads the way tunelab's prediction does."""
    import tokenizers

    tokenizer.save_pretrained(out_dir)
    file = out_dir / TOKENIZER_FILE
    if not file.is_file():
        raise TunelabError(f"export: the tokenizer of run {run_dir} has no {TOKENIZER_FILE} (not a fast tokenizer), "
                           "so onnxruntime users could not tokenize as the run does")
    fast = tokenizers.Tokenizer.from_file(str(file))
    fast.enable_truncation(max_length)
    fast.enable_padding(direction="right", pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
    fast.save(str(file))


def _metadata(info: RunInfo, model) -> dict:
    from ..models.classifier import resolve_pooling

    cfg = info.config
    return {"labels": list(cfg.stage.labels), "max_length": cfg.train.max_length, "inputs": list(INPUTS),
            "outputs": {"logits": "(batch, labels) raw scores", "probabilities": "(batch, labels) softmax of logits"},
            "padding": "right", "pad_token_id": model.config.get_text_config().pad_token_id,
            "run": str(info.path), "model": cfg.model, "method": cfg.method.name,
            "pooling": resolve_pooling(model, cfg.stage.pooling), "head": cfg.stage.head}


def _session(out_dir: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(out_dir / MODEL_FILE), providers=["CPUExecutionProvider"])


def encode_batch(fast_tokenizer, texts: list[str]) -> dict:
    """onnxruntime's feed for ``texts`` from the exported tokenizer.json alone (as a user would build it)."""
    encodings = fast_tokenizer.encode_batch(list(texts))
    return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}


def check_reproduces(graph, tokenizer, out_dir: Path, max_length: int, run_dir: Path) -> None:
    """The folder must classify like the run: tokenizer.json gives tunelab's ids, onnxruntime PyTorch's outputs."""
    import tokenizers

    fast = tokenizers.Tokenizer.from_file(str(out_dir / TOKENIZER_FILE))
    session = _session(out_dir)
    for texts in (PROBE, PROBE[:1]):  # a padded batch, and one row without padding
        feed = encode_batch(fast, texts)
        ids, mask = _padded(tokenizer, texts, max_length)
        if feed["input_ids"].shape != tuple(ids.shape) or not (feed["input_ids"] == ids.numpy()).all() \
                or not (feed["attention_mask"] == mask.numpy()).all():
            raise TunelabError(f"export: run {run_dir}: the exported {TOKENIZER_FILE} does not tokenize as the run does")
        got = session.run(list(OUTPUTS), feed)
        with torch.inference_mode():
            expected = [t.numpy() for t in graph(ids, mask)]
        for name, a, b in zip(OUTPUTS, got, expected):
            gap = float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")
            if gap > TOLERANCE * max(1.0, float(np.abs(b).max()) if name == "logits" else 1.0):
                raise TunelabError(f"export: run {run_dir}: onnxruntime's {name} differ from PyTorch's by {gap:.2g} "
                                   f"(more than {TOLERANCE:g}); the ONNX file was not kept")


class OnnxClassifier:
    """An exported folder, run with onnxruntime + tokenizers only (what the README snippet does, batched)."""

    def __init__(self, out_dir: str | Path):
        import tokenizers

        self.dir = Path(out_dir)
        self.info = json.loads((self.dir / INFO_FILE).read_text())
        self.tokenizer = tokenizers.Tokenizer.from_file(str(self.dir / TOKENIZER_FILE))
        self.session = _session(self.dir)

    @property
    def labels(self) -> list[str]:
        return self.info["labels"]

    def predict_proba(self, texts: list[str], batch_size: int = 16) -> "np.ndarray":
        """(N, L) probabilities; batches sorted by length, as tunelab's own prediction path does."""
        lengths = [sum(e.attention_mask) for e in self.tokenizer.encode_batch(list(texts))]  # (padded: count the mask)
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            out[index] = self.session.run(["probabilities"], encode_batch(self.tokenizer, [texts[i] for i in index]))[0]
        return out
