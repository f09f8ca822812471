"""`open_clip` backbone: any open_clip model name with a pretrained tag, a local checkpoint or
random init, plus the tower access that prompt styles working inside the encoders need.

The repository ships tiny model configs (``clapkit-*.json`` beside this module: ``clapkit-tiny``,
``clapkit-tiny-textwide``, ``clapkit-tiny-coca``), registered with open_clip when it is first
imported, so tests and demos build real CLIP and CoCa models with no download.

open_clip is imported where a model is built or resolved (:func:`open_clip_module`), never at
module import: listing plugins or ``clapkit --help`` must not pay its seconds and memory.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import pickle
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import attrs
import torch
from torch import nn

from clapkit import hookimpl
from clapkit.errors import ClapkitError
from clapkit.interfaces import Backbone, BuildContext, TokenStates

TINY_MODEL = "clapkit-tiny"
TINY_CONFIG = Path(__file__).with_name(f"{TINY_MODEL}.json")
#: a second tiny model with a text tower wider than its vision tower and towers of different
#: depths (text 64 wide x 2 blocks, vision 48 x 3, embed 96): prompt styles are tested on both
TINY_TEXTWIDE_MODEL = "clapkit-tiny-textwide"
#: a tiny CoCa (attentional-pool vision tower, CLS-appended text tower, caption decoder)
TINY_COCA_MODEL = "clapkit-tiny-coca"

_OPEN_CLIP: ModuleType | None = None


def open_clip_module() -> ModuleType:
    """open_clip, imported on first use, with the repository's tiny configs registered."""
    global _OPEN_CLIP
    if _OPEN_CLIP is None:
        import open_clip
        for cfg in sorted(Path(__file__).parent.glob("clapkit-*.json")):
            if cfg.stem not in open_clip.list_models():
                open_clip.add_model_config(cfg)
        _OPEN_CLIP = open_clip
    return _OPEN_CLIP

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


@attrs.frozen
class OpenClipConfig:
    """Recipe options of the ``open_clip`` backbone.

    ``pretrained``: an open_clip tag (``openai``, ``laion2b_s34b_b79k``, ...), a local checkpoint
    path (state dict saved by open_clip or torch), or ``""`` for random init drawn from ``seed``
    (deterministic, so a random model has a stable fingerprint and its cache is reused).
    """

    model: str = attrs.field(default="ViT-B-32")
    pretrained: str = ""
    precision: Literal["fp32", "fp16", "bf16"] = attrs.field(
        default="fp32", validator=attrs.validators.in_(("fp32", "fp16", "bf16")))
    cache_dir: str | None = None
    seed: int = 0

    @model.validator
    def _check_model(self, attribute: Any, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("model must be a non-empty open_clip model name")


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    """Drop open_clip's 'initialized randomly' warning: random init is asked for here."""

    def keep(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def state_dict_sha256(module: nn.Module) -> str:
    """Hash of every tensor of ``module`` (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _name(cfg: OpenClipConfig) -> str:
    """open_clip's spelling of a model name (``ViT-B/32`` -> ``ViT-B-32``)."""
    return cfg.model.replace("/", "-")


def _resolve_weights(cfg: OpenClipConfig) -> tuple[str, str | None]:
    """``(kind, value)`` with kind ``random``, ``tag`` or ``file``; errors name what is wrong."""
    open_clip = open_clip_module()
    known = open_clip.list_models()
    if _name(cfg) not in known:
        close = difflib.get_close_matches(cfg.model, known, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ClapkitError(f"unknown open_clip model '{cfg.model}'{hint} "
                           f"(see open_clip.list_models(); the repository ships '{TINY_MODEL}')")
    p = cfg.pretrained.strip()
    if p.lower() in ("", "none", "random"):
        return "random", None
    tags = open_clip.list_pretrained_tags_by_model(_name(cfg))
    if p in tags:
        return "tag", p
    path = Path(p).expanduser()
    if path.is_file():
        return "file", str(path.resolve())
    looks_like_path = os.sep in p or "/" in p or p.endswith(_CHECKPOINT_SUFFIXES)
    if looks_like_path:
        raise ClapkitError(f"pretrained checkpoint file not found: {path}")
    raise ClapkitError(f"pretrained '{p}' is neither a tag of open_clip model '{cfg.model}' "
                       f"nor an existing file (tags: {', '.join(tags) or 'none'})")


def _tag_weights_cached(cfg: OpenClipConfig, tag: str) -> bool:
    """Whether the weights of ``tag`` are already on this machine (no network used)."""
    pcfg = open_clip_module().get_pretrained_cfg(_name(cfg), tag) or {}
    if "file" in pcfg:
        return Path(pcfg["file"]).is_file()
    hub = pcfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            hub = ""
        else:
            model_id, filename = os.path.split(hub)
            names = [filename or "open_clip_pytorch_model.bin"]
            names.insert(0, str(Path(names[0]).with_suffix(".safetensors")).replace(
                "pytorch_model", "model"))
            return any(isinstance(try_to_load_from_cache(model_id, n, cache_dir=cfg.cache_dir),
                                  str) for n in names)
    url = pcfg.get("url", "")
    if url:
        folder = Path(cfg.cache_dir or Path.home() / ".cache" / "clip").expanduser()
        return (folder / os.path.basename(url)).is_file()
    return False


def _check_download_possible(cfg: OpenClipConfig, tag: str) -> None:
    """Weights not cached: one quick connection attempt, and on failure one clear error
    (instead of the hub client's retries with backoff, about a minute offline)."""
    if _tag_weights_cached(cfg, tag):
        return
    import socket
    from urllib.parse import urlparse
    pcfg = open_clip_module().get_pretrained_cfg(_name(cfg), tag) or {}
    host = "huggingface.co" if pcfg.get("hf_hub") else (urlparse(pcfg.get("url", "")).hostname
                                                          or "huggingface.co")
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        raise ClapkitError(
            f"backbone.pretrained = '{tag}': the weights of open_clip model '{cfg.model}' are "
            f"not cached on this machine and cannot be downloaded ({host}: {exc}). Download "
            "them once where there is a network (open_clip caches them), or point "
            "backbone.pretrained at a local checkpoint file: --set "
            "backbone.pretrained=/path/to/open_clip_pytorch_model.bin (or .safetensors/.pt)"
        ) from None


class OpenClipBackbone(Backbone):
    """A frozen open_clip CLIP model behind the clapkit Backbone contract."""

    def __init__(self, cfg: OpenClipConfig) -> None:
        super().__init__()
        self.cfg = cfg
        kind, value = _resolve_weights(cfg)
        if kind == "tag" and value:
            _check_download_possible(cfg, value)
        self._weights_kind, self._weights_value = kind, value
        open_clip = open_clip_module()
        with torch.random.fork_rng(devices=[]), _quiet_random_init():
            torch.manual_seed(cfg.seed)
            try:
                model, train_tf, eval_tf = open_clip.create_model_and_transforms(
                    _name(cfg), pretrained=value, precision=cfg.precision,
                    cache_dir=cfg.cache_dir)
            except pickle.UnpicklingError as exc:     # torch.load(weights_only=True) refused it
                found = re.search(r"GLOBAL ([\w.]+)", str(exc))
                raise ClapkitError(f"checkpoint {value} refused: it holds Python objects other "
                                   "than tensors and plain data"
                                   f"{f' ({found.group(1)})' if found else ''}; a checkpoint "
                                   "is never allowed to run code") from None
            except (RuntimeError, OSError, ValueError, KeyError) as exc:
                what = f"checkpoint {value}" if kind == "file" else f"pretrained '{value}'"
                raise ClapkitError(f"open_clip could not build '{cfg.model}' with {what}: "
                                   f"{type(exc).__name__}: {exc}") from exc
            if kind == "random":
                _init_left_empty(model)
        self.model = model
        self._train_tf, self._eval_tf = train_tf, eval_tf
        self._tokenizer = open_clip.get_tokenizer(_name(cfg))
        self.model.requires_grad_(False)
        self.model.eval()
        vis = self.model.visual
        self.embed_dim = int(getattr(vis, "output_dim", 0) or self._probe_embed_dim())
        size = getattr(vis, "image_size", None) or vis.preprocess_cfg["size"]
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self._input_dtype = open_clip.get_input_dtype(cfg.precision)
        self._eot_id: int | None = getattr(self._tokenizer, "eot_token_id", None)
        self.capabilities = self._find_capabilities()
        self._fingerprint: str | None = None
        # the file's content as loaded now, so a later overwrite of the path cannot alias it
        self._file_sha = _file_sha256(Path(value)) if kind == "file" and value else None
        self._sha_before_load: str | None = None
        # weights version stamp (see fingerprint): the weights the identity describes
        self._stamp = self._weights_stamp()
        self._identity_sha = state_dict_sha256(self.model)
        self.register_load_state_dict_pre_hook(_before_load)
        self.register_load_state_dict_post_hook(_after_load)

    # -- basics --------------------------------------------------------------------------

    def _probe_embed_dim(self) -> int:
        with torch.no_grad():
            return int(self.model.encode_text(self.tokenize(["a"])).shape[-1])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _images_in(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, dtype=self._input_dtype or self.dtype)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        # normalize=False: CoCa's encoders normalise by default, the contract wants raw
        return self.model.encode_image(self._images_in(images), normalize=False).float()

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens.to(self.device), normalize=False).float()

    def _find_capabilities(self) -> frozenset[str]:
        """What this model's towers support (see ``clapkit.interfaces.BACKBONE_CAPABILITIES``):
        open_clip ViT towers give tokens and take prompts, CoCa adds its caption decoder;
        timm / ResNet vision and HF text towers give pooled features only."""
        caps: set[str] = set()
        text = self._find_text_tower()
        vision = self._find_vision_tower()
        if text is not None:
            caps.add("text_embedded")
            if text is self.model or hasattr(text, "output_tokens"):
                caps.add("text_tokens")
        if vision is not None:
            caps.add("image_tokens")
            if text is not None:
                caps.add("deep_prompts")
        if isinstance(getattr(self.model, "text_decoder", None), nn.Module):
            caps.add("text_decoder")
        return frozenset(caps)

    # -- token-level outputs -------------------------------------------------------------

    @property
    def image_token_width(self) -> int:
        """Width of the image token states: the pooled width (``proj`` input; CoCa's
        attentional pooler output) where there is a projection, else the tower width."""
        self.require("image_tokens", who="image_token_width")
        v = self._vision_tower()
        return int(v.proj.shape[0] if v.proj is not None else v.class_embedding.shape[-1])

    @property
    def text_token_width(self) -> int:
        self.require("text_tokens", who="text_token_width")
        return int(self._text_tower().token_embedding.weight.shape[1])

    @property
    def vocab_size(self) -> int:
        """Size of the caption decoder's output (``text_decoder``)."""
        self.require("text_decoder", who="vocab_size")
        return int(self.model.text_decoder.text_projection.shape[1])

    def text_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[C,L]`` bool, True up to and including each row's EOT (padding is False)."""
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        if self._eot_id is None:
            eot = tokens.argmax(dim=-1)                      # CLIP's BPE: EOT is the top id
        else:
            hit = tokens == self._eot_id
            eot = torch.where(hit.any(-1), hit.int().argmax(-1), tokens.shape[1] - 1)
        return pos[None, :] <= eot[:, None]

    def encode_image_tokens(self, images: torch.Tensor) -> TokenStates:
        """open_clip's own token output of the vision tower (``output_tokens``): patch tokens
        after ``ln_post`` (ViT) or the attentional pooler's queries (CoCa)."""
        self.require("image_tokens", who="encode_image_tokens")
        v = self.model.visual
        with _output_tokens(v):
            pooled, tokens = v(self._images_in(images))
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return TokenStates(pooled=pooled.float(), tokens=tokens.float(), mask=mask)

    def encode_text_tokens(self, tokens: torch.Tensor) -> TokenStates:
        """open_clip's own token output of the text tower: ``output_tokens`` of a separate
        tower (CoCa's: the states before ``ln_final``, which its decoder reads), or the last
        block through ``forward_intermediates`` with ``ln_final`` for the built-in CLIP tower.
        """
        self.require("text_tokens", who="encode_text_tokens")
        tokens = tokens.to(self.device)
        text = self._find_text_tower()
        if text is self.model:
            out = self.model.forward_intermediates(text=tokens, text_indices=1, normalize=False,
                                                   normalize_intermediates=True)
            pooled, states = out["text_features"], out["text_intermediates"][-1]
        else:
            with _output_tokens(text):
                pooled, states = text(tokens)
        return TokenStates(pooled=pooled.float(), tokens=states.float(),
                           mask=self.text_mask(tokens[:, :states.shape[1]]))

    def decode_text(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor
                    ) -> torch.Tensor:
        """CoCa's multimodal decoder: causal self-attention over the text states and
        cross-attention to the image tokens -> next-token logits ``[B,L,vocab_size]``."""
        self.require("text_decoder", who="decode_text")
        dec = self.model.text_decoder
        dtype = dec.text_projection.dtype
        return dec(image_tokens.to(self.device, dtype), text_tokens.to(self.device, dtype)
                   ).float()

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().float().reshape(())

    def transform(self, train: bool) -> Callable[[Any], torch.Tensor]:
        return self._train_tf if train else self._eval_tf

    def preprocess_config(self) -> dict[str, Any]:
        return dict(self.model.visual.preprocess_cfg)

    def _weights_stamp(self) -> tuple[tuple[int, int], ...]:
        """(storage pointer, version counter) of every tensor: any in-place update (optimizer
        step, ``p.add_`` under no_grad, ``copy_``) or swapped tensor changes it; it costs no
        pass over the weights. (Writes through ``p.data`` bypass version counters.)"""
        return tuple((t.data_ptr(), t._version) for t in self.model.state_dict(keep_vars=True)
                     .values())

    def _check_weights(self) -> None:
        """When the weights moved since the identity was taken (trained, edited in place),
        the identity becomes the hash of the current weights, so the cache key changes."""
        stamp = self._weights_stamp()
        if stamp == self._stamp:
            return
        sha = state_dict_sha256(self.model)          # a device move keeps the content
        if sha != self._identity_sha:
            self._weights_kind, self._weights_value = "state", sha
            self._fingerprint = None
        self._identity_sha, self._stamp = sha, stamp

    def fingerprint(self) -> str:
        """sha256 of model config + weights identity + preprocessing + precision.

        Weights identity: the tag, the checkpoint file's content hash, or for random init the
        seed and a hash of the state dict (so two different random models never collide).
        Once the weights change after building (a stage that trains the encoder, an in-place
        edit), the identity is the hash of the current weights: the key follows the weights.
        """
        self._check_weights()
        if self._fingerprint is None:
            if self._weights_kind == "state":
                weights = f"state-sha256:{self._weights_value}"
            elif self._weights_kind == "tag":
                weights = f"tag:{self._weights_value}"
            elif self._weights_kind == "file":
                weights = f"file-sha256:{self._file_sha}"
            else:
                weights = f"random:seed={self.cfg.seed}:{self._identity_sha}"
            doc = {"model": _name(self.cfg),
                   "model_cfg": open_clip_module().get_model_config(_name(self.cfg)),
                   "weights": weights, "precision": self.cfg.precision,
                   "preprocess": self.preprocess_config()}
            blob = json.dumps(doc, sort_keys=True, default=str).encode()
            self._fingerprint = hashlib.sha256(blob).hexdigest()[:24]
        return self._fingerprint

    def describe(self) -> str:
        w = self._weights_value if self._weights_kind != "random" else f"random(seed={self.cfg.seed})"
        return f"open_clip {self.cfg.model} [{w}, {self.cfg.precision}]"

    # -- tower access for prompt styles -----------------------------------------------------

    def _find_text_tower(self) -> Any:
        """The module holding the open_clip text tower attributes (``CLIP`` itself or
        ``model.text``: CustomTextCLIP, CoCa); None for HF text towers."""
        m = self.model
        tower = m if hasattr(m, "token_embedding") else getattr(m, "text", None)
        if tower is None or not hasattr(tower, "token_embedding") \
                or not hasattr(tower, "transformer"):
            return None
        return tower

    def _find_vision_tower(self) -> Any:
        vis = self.model.visual
        needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer",
                  "output_tokens", "_pool")
        return vis if all(hasattr(vis, a) for a in needed) else None

    def _text_tower(self) -> Any:
        tower = self._find_text_tower()
        if tower is None:
            raise ClapkitError(f"backbone {self.describe()} has no open_clip text transformer "
                               "(HF text towers give pooled features only)")
        return tower

    def _vision_tower(self) -> Any:
        vis = self._find_vision_tower()
        if vis is None:
            raise ClapkitError(f"backbone {self.describe()}: tokens and vision prompts need an "
                               "open_clip VisionTransformer, got "
                               f"{type(self.model.visual).__name__}")
        return vis

    # widths and depths are asked by prompt styles at build: a model without the towers they
    # need is refused there, naming the capability and the backbone
    @property
    def text_width(self) -> int:
        self.require("text_embedded", who="text_width")
        return int(self._text_tower().token_embedding.weight.shape[1])

    @property
    def vision_width(self) -> int:
        self.require("deep_prompts", who="vision_width")
        return int(self._vision_tower().class_embedding.shape[-1])

    @property
    def text_layers(self) -> int:
        self.require("text_embedded", who="text_layers")
        return len(self._text_tower().transformer.resblocks)

    @property
    def vision_layers(self) -> int:
        self.require("deep_prompts", who="vision_layers")
        return len(self._vision_tower().transformer.resblocks)

    def token_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        self.require("text_embedded", who="token_embedding")
        return self._text_tower().token_embedding(tokens.to(self.device))

    def encode_text_embedded(self, embeddings: torch.Tensor, tokens: torch.Tensor,
                             deep_prompts: Sequence[torch.Tensor | None] | None = None
                             ) -> torch.Tensor:
        """Text tower from ``[C,L,W]`` embeddings, pooled at the EOT of ``tokens``.

        ``deep_prompts[j]`` (``[n,W]`` or ``[C,n,W]``) is the prompt input of block ``j``
        (the Backbone convention): entry 0 replaces embedding positions ``1..n`` (before the
        positional embedding is added, as a token would), entry ``j >= 1`` replaces the
        outputs of block ``j-1`` at those positions; ``None`` entries pass through.

        A CoCa text tower appends its CLS embedding after the sequence, masks the padding
        for it and pools that last position after ``ln_final``, as open_clip's own forward.
        """
        self.require("text_embedded", who="encode_text_embedded")
        deep = _check_deep(deep_prompts, self.text_layers, "text")
        if any(p is not None for p in deep):
            self.require("deep_prompts", who="encode_text_embedded")
        t = self._text_tower()
        tokens = tokens.to(self.device)
        cast = t.transformer.get_cast_dtype()
        pool = getattr(t, "text_pool_type", None) or getattr(t, "pool_type", "argmax")
        cls = getattr(t, "cls_emb", None)
        pad_mask = getattr(t, "use_pad_mask", False) or cls is not None
        if pool == "argmax" and t.attn_mask is not None and not pad_mask:
            # causal attention + pooling at EOT: the padding after the last EOT of the batch
            # cannot reach any pooled position, so it is not computed (same result, and a
            # short class prompt costs ~10 positions instead of 77)
            keep = int(tokens.argmax(dim=-1).max()) + 1
            embeddings, tokens = embeddings[:, :keep], tokens[:, :keep]
        if deep and deep[0] is not None:
            embeddings = _replace_after_sot(embeddings, deep[0])
        x = embeddings.to(cast)
        if cls is not None:
            x = torch.cat([x, cls.to(cast).view(1, 1, -1).expand(x.shape[0], -1, -1)], dim=1)
        seq = x.shape[1]
        x = x + t.positional_embedding[:seq].to(cast)
        mask = t.attn_mask
        if mask is not None:
            mask = mask[:seq, :seq]
        if pad_mask:
            pad = t._build_additive_mask(tokens, seq, x.dtype)
            mask = pad if mask is None else mask.unsqueeze(0) + pad
        for j, block in enumerate(t.transformer.resblocks):
            if 0 < j < len(deep) and deep[j] is not None:
                x = _replace_after_sot(x, deep[j])
            x = block(x, attn_mask=mask)
        if cls is not None:
            x = t.ln_final(x[:, -1])                 # CoCa: the appended CLS, LN after pool
        else:
            x = t.ln_final(x)
            eos = getattr(t, "text_eos_id", None) or getattr(t, "eos_id", None)
            x = open_clip_module().transformer.text_global_pool(x, tokens, pool,
                                                                 eos_token_id=eos)
        proj = t.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x.float()

    def encode_image_prompted(self, images: torch.Tensor,
                              deep_prompts: Sequence[torch.Tensor | None] | None
                              ) -> torch.Tensor:
        """Vision tower with prompt tokens (the Backbone convention): ``deep_prompts[0]``
        (``[n,Wv]`` or ``[B,n,Wv]``) is appended after the patch tokens (after the positional
        embedding, before ``ln_pre``), ``deep_prompts[j]`` replaces those n tokens as the input
        of block j (``None``: pass through); they are dropped before pooling (MaPLe)."""
        if deep_prompts:
            self.require("deep_prompts", who="encode_image_prompted")
        v = self._vision_tower()
        deep = _check_deep(deep_prompts, self.vision_layers, "vision")
        if deep and deep[0] is None:
            raise ClapkitError("vision deep_prompts[0] is None: the prompt tokens appended "
                               "to the patch tokens must be given before later blocks "
                               "can replace them")
        x = self._images_in(images)
        x = v.conv1(x).flatten(2).transpose(1, 2)                       # [B, grid^2, Wv]
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        n = 0

        def batch_prompt(p: torch.Tensor) -> torch.Tensor:
            p = p.to(x.dtype)
            return p.expand(x.shape[0], -1, -1) if p.dim() == 2 else p

        if deep:
            first = batch_prompt(deep[0])
            n = first.shape[1]
            x = torch.cat([x, first], dim=1)
        x = v.ln_pre(x)
        for j, block in enumerate(v.transformer.resblocks):
            if 0 < j < len(deep) and deep[j] is not None:
                x = torch.cat([x[:, :x.shape[1] - n], batch_prompt(deep[j])], dim=1)
            x = block(x)
        if n:
            x = x[:, :x.shape[1] - n]
        pooled, _ = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return pooled.float()


def _init_left_empty(model: nn.Module) -> None:
    """Initialise what open_clip leaves as ``torch.empty`` at random init: CoCa's decoder
    projection (``MultimodalTransformer.init_parameters`` is never called), which would
    otherwise hold whatever memory was there -- non-deterministic logits and fingerprint."""
    dec = getattr(model, "text_decoder", None)
    proj = getattr(dec, "text_projection", None)
    if isinstance(proj, nn.Parameter):
        with torch.no_grad():
            nn.init.normal_(proj, std=dec.width ** -0.5)


@contextlib.contextmanager
def _output_tokens(tower: nn.Module) -> Iterator[None]:
    """The tower's own ``(pooled, tokens)`` output (open_clip's ``output_tokens``) for one
    call; CoCa's towers have it on already, CLIP's return pooled features otherwise."""
    before = tower.output_tokens
    tower.output_tokens = True
    try:
        yield
    finally:
        tower.output_tokens = before


def _check_deep(deep_prompts: Sequence[torch.Tensor | None] | None, layers: int,
                tower: str) -> list[torch.Tensor | None]:
    """The deep prompts as a list; more entries than blocks is an error (never ignored)."""
    deep = list(deep_prompts or [])
    if len(deep) > layers:
        raise ClapkitError(f"{len(deep)} deep prompts for the {tower} tower, which has "
                           f"{layers} blocks (entry j feeds block j)")
    return deep


def _replace_after_sot(x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """``x`` ``[C,L,W]`` with positions ``1..n`` replaced by ``prompt`` ``[n,W]``/``[C,n,W]``."""
    p = prompt.to(x.dtype)
    p = p.expand(x.shape[0], -1, -1) if p.dim() == 2 else p
    return torch.cat([x[:, :1], p, x[:, 1 + p.shape[1]:]], dim=1)


def _before_load(module: OpenClipBackbone, *args: Any) -> None:
    module._sha_before_load = state_dict_sha256(module.model)


def _after_load(module: OpenClipBackbone, incompatible: Any) -> None:
    """Weights loaded over the built ones (a checkpoint resume, a user's state dict) change
    the fingerprint only when they differ, so a resumed frozen backbone keeps its cache."""
    after = state_dict_sha256(module.model)
    if after != module._sha_before_load:
        module._weights_kind, module._weights_value = "state", after
        module._fingerprint = None
    module._sha_before_load = None
    module._identity_sha, module._stamp = after, module._weights_stamp()


def build(cfg: OpenClipConfig, ctx: BuildContext) -> OpenClipBackbone:
    """open_clip CLIP model (any model name; pretrained tag, local checkpoint or random init)."""
    return OpenClipBackbone(cfg)


@hookimpl
def clapkit_register(registrar: Any) -> None:
    registrar.add("backbone", "open_clip", build, config=OpenClipConfig,
                  test_options=lambda ctx: {"model": TINY_MODEL},
                  # recipe check without the weights: the recipe's model, randomly initialised
                  offline_options=lambda cfg: {"pretrained": ""})
