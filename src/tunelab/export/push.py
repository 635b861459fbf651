"""`tunelab push RUN REPO_ID`: a finished run on the Hugging Face Hub, as stock peft or transformers loads it.

What goes up depends on the method:

- peft methods (lora, ia3, prefix, prompt) on a language model: the run's saved adapter (peft format) by
  default; ``merged=True`` (lora, ia3) the model with the adapter folded in;
- full and freeze: the model itself (they have no adapter; their weights are plain transformers weights);
- the bottleneck ``adapter`` method: refused — its adapters are tunelab's own modules, which neither peft nor
  transformers loads and which do not fold into plain weights (serve the run with `tunelab serve` instead);
- classifiers (classify, reward; so every ``head`` run): refused — tunelab's head has a bias and its own
  pooling, which stock ``*ForSequenceClassification`` models lack, so no stock load reproduces the run;
- a peft adapter on a model built from another run (dpo/rlhf with ``stage.policy``) does not reproduce the
  run on the plain base, so those go up ``merged``.

Every upload also holds the tokenizer, a model card (README.md, see ``card.py``) and the run's
``config.yaml`` and ``summary.json`` under ``tunelab/``. The folder is written and checked (stock
libraries reload it with the run's outputs) before anything is sent, and is sent as one commit.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..core import console
from ..core.errors import TunelabError
from ..core.lazy import no_grad, torch
from ..methods import METHODS
from ..models import CAUSAL_LM, resolve
from ..runs.open import load, open_run
from ..stages import STAGES
from . import card as cards
from .merge import merge_run
from .output import check_new_output, writing

ADAPTER, MODEL = "adapter", "model"  # what a push uploads
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def push_run(run_dir: str | Path, repo_id: str, *, merged: bool = False, private: bool = False,
             dry_run: str | Path | None = None, license: str | None = None) -> str:
    """Upload run ``run_dir`` to Hub model repo ``repo_id`` (created if missing); returns its URL.

    With ``dry_run=DIR`` nothing is uploaded: DIR (new or empty) receives exactly the folder that would be,
    and DIR is returned.
    """
    run_dir = Path(run_dir)
    _check_repo_id(repo_id)
    info = open_run(run_dir, "push")
    content = plan(info, merged)
    if dry_run is not None:
        out = Path(dry_run)
        check_new_output(out)
        with writing(out):
            write_folder(info, out, repo_id, content, license)
        return str(out)
    token = _token()
    _check_online()
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    user = _hub_call(lambda: api.whoami(), "check the token")
    namespace = repo_id if "/" in repo_id else f"{user.get('name')}/{repo_id}"
    staging = Path(tempfile.mkdtemp(prefix=".tunelab-push-"))
    try:
        folder = staging / "upload"
        with writing(folder):
            write_folder(info, folder, namespace, content, license)
        return _upload(api, folder, namespace, private, run_dir.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def plan(info, merged: bool) -> str:
    """ADAPTER or MODEL for run ``info`` (a one-line error when neither can go up), before anything loads."""
    path, name = info.path, None if info.baseline else info.config.method.name
    if info.baseline:
        raise TunelabError(f"push: {path} is {info.describe}; it has no trained weights to push")
    mergeable = hasattr(METHODS[name], "merge")
    if info.model_kind != CAUSAL_LM:
        raise TunelabError(f"push: run {path} is {info.describe}: tunelab's classifier (a head with a bias, its own "
                           "pooling) has no form that stock transformers loads with the run's outputs, so it is not "
                           "pushed; serve it with `tunelab serve` (POST /v1/classify) or the container in docs/deploy.md")
    if name == "adapter":
        raise TunelabError(f"push: run {path} uses method 'adapter' (bottleneck adapters), tunelab's own modules: "
                           "neither peft nor transformers loads them and they do not fold into plain weights; "
                           "serve the run with `tunelab serve` or the container in docs/deploy.md instead")
    if merged:
        if not mergeable:
            can = ", ".join(n for n, m in METHODS.items() if hasattr(m, "merge"))
            raise TunelabError(f"push: --merged: method '{name}' of run {path} cannot be merged into plain weights "
                               f"(mergeable: {can}); push its adapter without --merged")
        return MODEL
    if not _peft_adapter(path):
        if mergeable:  # full, freeze: the weights already are a plain transformers model
            return MODEL
        raise TunelabError(f"push: run {path} (method '{name}') has no peft adapter and cannot be merged")
    if _built_on_another_run(info):
        raise TunelabError(f"push: run {path} was trained on top of run {_built_on_another_run(info)} "
                           "(stage.policy), not on the plain base, so its adapter alone does not reproduce it; "
                           + ("push it with --merged" if mergeable else "serve it with `tunelab serve`"))
    return ADAPTER


def write_folder(info, folder: Path, repo_id: str, content: str, license: str | None = None) -> Path:
    """Write what a push of ``info`` uploads into the (new or empty) ``folder``: weights, tokenizer, card, config."""
    from ..training.progress import library_output

    with library_output(console.level()):  # no "Loading weights" bars or deprecation warnings
        _write_weights(info, folder, content)
    run_dir = info.path
    extra = folder / Path(cards.CONFIG_FILE).parent
    extra.mkdir(exist_ok=True)
    shutil.copyfile(run_dir / "config.yaml", folder / cards.CONFIG_FILE)
    shutil.copyfile(run_dir / "summary.json", extra / "summary.json")
    cards.build_card(info, repo_id, content, license).save(folder / "README.md")
    return folder


def _write_weights(info, folder: Path, content: str) -> None:
    run_dir = info.path
    if content == MODEL:
        console.note(f"push: merging {run_dir} into a plain transformers model")
        merge_run(run_dir, folder)  # writes model + tokenizer, checked to reload identically
    else:
        console.note(f"push: writing the peft adapter of {run_dir}")
        loaded = load(run_dir)
        for name in _ADAPTER_FILES:
            shutil.copyfile(run_dir / "adapter" / name, folder / name)
        _point_at_hub_base(folder / "adapter_config.json", info.config.model)
        loaded.tokenizer.save_pretrained(folder)
        _check_adapter_reloads(loaded, folder, run_dir)


def _peft_adapter(run_dir: Path) -> bool:
    """Does the run hold an adapter in peft's own format (peft writes ``peft_type`` into its config)?"""
    config = run_dir / "adapter" / "adapter_config.json"
    try:
        return config.is_file() and "peft_type" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def _built_on_another_run(info) -> str | None:
    cfg = info.config
    for link in getattr(STAGES[cfg.stage.name], "LINKS", ()):
        if link.builds_model and getattr(cfg.stage, link.field, None):
            return str(getattr(cfg.stage, link.field))
    return None


def _point_at_hub_base(config_file: Path, model: str) -> None:
    """peft's AutoPeftModel loads the base named in adapter_config.json: name the Hub model, not a local path."""
    base = cards.hub_base(model)
    if base is None:
        return
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = base
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@no_grad
def _check_adapter_reloads(loaded, folder: Path, run_dir: Path) -> None:
    """Stock peft on the stock base must rebuild the run's outputs from ``folder`` (nothing tunelab adds)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = loaded.model
    probe = loaded.tokenizer(["tunelab push: does the adapter reproduce the run?"], return_tensors="pt")
    probe = {k: v.to(model.device) for k, v in probe.items() if k in ("input_ids", "attention_mask")}
    try:
        base = AutoModelForCausalLM.from_pretrained(resolve(loaded.config.model), dtype=model.dtype)
        reloaded = PeftModel.from_pretrained(base, folder).to(model.device).eval()
        expected, got = model(**probe).logits, reloaded(**probe).logits
    except (RuntimeError, ValueError, OSError) as exc:  # e.g. a vocabulary resized in training
        raise TunelabError(f"push: stock peft cannot load the adapter of run {run_dir} on its base "
                           f"({str(exc).splitlines()[0]}); push it with --merged") from None
    tokens = probe["input_ids"].shape[1]
    expected, got = expected[:, -tokens:], got[:, -tokens:]  # prompt tuning: drop virtual-token positions
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
        raise TunelabError(f"push: stock peft on the base model does not reproduce run {run_dir} from its adapter; "
                           "push it with --merged")


# --------------------------------------------------------------------------- the Hub


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise TunelabError(f"push: repo id {repo_id!r} is not valid: {str(exc).splitlines()[0]} "
                           "(expected NAME or OWNER/NAME)") from None
    if repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise TunelabError(f"push: repo id {repo_id!r} is not valid (expected NAME or OWNER/NAME)")


def _token() -> str:
    """HF_TOKEN, else the token `hf auth login` stored."""
    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise TunelabError("push: no Hugging Face token: set HF_TOKEN or log in with `hf auth login` "
                           "(or write the folder with --dry-run DIR)")
    return token


def _check_online() -> None:
    if os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on"):
        raise TunelabError("push: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to push, "
                           "or write the folder with --dry-run DIR")


def _hub_call(call, action: str):
    """Run one Hub request; any failure becomes one line that says what could not be done and why."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, HTTPError, OfflineModeIsEnabled

    try:
        return call()
    except OfflineModeIsEnabled:
        raise TunelabError(f"push: cannot {action}: the Hub client is in offline mode (HF_HUB_OFFLINE)") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        why = {401: "the token was refused (401): check HF_TOKEN or log in again",
               403: "the token may not write there (403): use a write token, or a namespace you own",
               404: "not found (404)"}.get(status, f"HTTP {status}: {str(exc).splitlines()[0]}")
        raise TunelabError(f"push: cannot {action}: {why}") from None
    except (HTTPError, OSError) as exc:  # connection refused, DNS, timeouts: the Hub is out of reach
        raise TunelabError(f"push: cannot {action}: the Hub at {constants.ENDPOINT} is out of reach "
                           f"({type(exc).__name__}: {exc or 'no answer'})") from None


def _upload(api, folder: Path, repo_id: str, private: bool, run_name: str) -> str:
    """One commit that makes the repo hold exactly ``folder``; a repo this call created is deleted if it fails."""
    existed = _hub_call(lambda: api.repo_exists(repo_id), f"look up {repo_id}")
    # private=None, not False: a new repo then gets the owner's default visibility (an org may default to private)
    url = _hub_call(lambda: api.create_repo(repo_id, private=True if private else None, exist_ok=True),
                    f"create {repo_id}")
    files = [p for p in folder.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files) / 2**20
    console.note(f"push: uploading {len(files)} files ({size:.1f} MiB) to {url.repo_id}")
    try:
        # delete_patterns="*": files of an earlier push that this one does not have go (.gitattributes stays)
        _hub_call(lambda: api.upload_folder(repo_id=url.repo_id, folder_path=folder, delete_patterns="*",
                                            commit_message=f"tunelab push {run_name}"), f"upload to {url.repo_id}")
    except BaseException:
        if not existed:
            try:
                api.delete_repo(url.repo_id)
            except Exception:  # best effort: the upload error is the one to report
                pass
        raise
    return str(url)
