"""Finding a dataset on disk and reading its list files, with errors that say where.

* :func:`dataset_root` resolves a recipe's ``root`` (relative to the working directory) and,
  when it is missing, shows the expected folder layout, the key to set, where the dataset is
  obtained and, only for layouts a registered demo generator writes, the ``clapkit data
  make-demo --kind K`` command and the folder it writes.
* :func:`read_list` parses ``<path> [<num_frames>] <label>`` annotation lines; a malformed line
  is an error naming the file and the line number.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Iterable
from pathlib import Path

import attrs

from ..errors import ClapkitError

def resolve_path(path: str | Path) -> Path:
    """``~`` expanded; relative paths against the current working directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path.cwd() / p


def _norm(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def layout_from_doc(doc: str | None) -> str | None:
    """The literal block after ``Layout ...::`` in a dataset plugin's module docstring."""
    if not doc:
        return None
    lines = doc.splitlines()
    start = next((i for i, ln in enumerate(lines)
                  if ln.lstrip().startswith("Layout") and ln.rstrip().endswith("::")), None)
    if start is None:
        return None
    block: list[str] = []
    for ln in lines[start + 1:]:
        if ln.strip() and not ln.startswith((" ", "\t")):
            break
        block.append(ln)
    text = "\n".join(block).strip("\n")
    return textwrap.dedent(text) or None


def demo_hint(dataset: str) -> str | None:
    """The ``make-demo`` command that generates data of ``dataset``'s layout, and the folder it
    writes, when a registered demo generator reads as that dataset; else None."""
    try:
        from ..plugins import default_host as host
        entries = list(host().registries["demo"])
    except Exception:  # noqa: BLE001 - a hint must never hide the real error
        return None
    kinds = [e.name for e in entries if _norm(str(e.meta.get("dataset", ""))) == _norm(dataset)]
    if not kinds:
        return None
    folder = Path(".clapkit_demo") / kinds[0]
    return (f"to try the pipeline without it, `clapkit data make-demo --kind {kinds[0]}` "
            f"writes a generated {dataset}-layout set to {folder}/ (then --set "
            f"data.root={folder})")


def dataset_root(root: str | Path, dataset: str, obtain: str, layout: str | None = None
                 ) -> Path:
    """The existing root folder of ``dataset`` or one clear error: what is missing, the
    folder layout expected under ``data.root`` (``layout``, else the ``Layout::`` block of the
    calling plugin's docstring), the key to set, where the data comes from, and the
    ``make-demo`` kind that generates that layout (only when one exists)."""
    p = resolve_path(root)
    if p.is_dir():
        return p
    if layout is None:
        caller = inspect.currentframe()
        mod = inspect.getmodule(caller.f_back) if caller and caller.f_back else None
        layout = layout_from_doc(getattr(mod, "__doc__", None))
    what = "is not a folder" if p.exists() else "does not exist"
    msg = f"{dataset}: dataset root '{p}' {what}."
    if layout:
        msg += ("\nExpected layout under data.root:\n"
                + textwrap.indent(layout, "    ") + "\n")
    else:
        msg += " "
    msg += (f"Point the recipe at it with --set data.root=/path/to/{dataset} (or root = ... "
            f"in [data]). {dataset} is obtained from {obtain}")
    hint = demo_hint(dataset)
    if hint:
        msg += f"; {hint}"
    return _raise(msg)


def _raise(msg: str) -> Path:
    raise ClapkitError(msg)


def find_file(root: Path, name: str | Path, also: Iterable[Path] = ()) -> Path | None:
    """``name`` if absolute; else the first existing of root/name, each of ``also``/name,
    cwd/name; also tries name without a leading segment equal to root's folder name (so
    ``RAER/annotation/train.txt`` works with root = ``.../RAER``). None when absent."""
    p = Path(name).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    cands = [root / p, *(Path(a) / p for a in also), Path.cwd() / p]
    if p.parts and p.parts[0] == root.name and len(p.parts) > 1:
        cands.insert(1, root.joinpath(*p.parts[1:]))
    return next((c for c in cands if c.exists()), None)


@attrs.frozen
class ListEntry:
    path: str
    num_frames: int | None
    label: int
    line: int


def read_list(file: Path, *, with_frames: bool, label_base: int,
              num_classes: int) -> list[ListEntry]:
    """Entries of an annotation list; labels shifted to 0-based with ``label_base``.

    Paths may contain spaces (the last one or two fields are numbers). Blank lines and lines
    starting with ``#`` are skipped.
    """
    n_num = 2 if with_frames else 1
    form = "<path> <num_frames> <label>" if with_frames else "<path> <label>"
    out = []
    with open(file, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            try:
                if len(fields) < n_num + 1:
                    raise ValueError
                nums = [int(f) for f in fields[-n_num:]]
            except ValueError:
                raise ClapkitError(f"{file}:{lineno}: malformed annotation line {line!r}; "
                                   f"expected '{form}' with integer fields") from None
            label = nums[-1] - label_base
            if not 0 <= label < num_classes:
                raise ClapkitError(
                    f"{file}:{lineno}: label {nums[-1]} is out of range: this list is read "
                    f"with label_base = {label_base}, so labels must be "
                    f"{label_base}..{label_base + num_classes - 1}")
            frames = nums[0] if with_frames else None
            if frames is not None and frames <= 0:
                raise ClapkitError(f"{file}:{lineno}: num_frames must be positive, got "
                                   f"{frames}")
            out.append(ListEntry(" ".join(fields[:-n_num]), frames, label, lineno))
    return out


def split_files(root: Path, dataset: str, files: dict[str, str],
                also: Iterable[Path] = ()) -> dict[str, Path]:
    """``{split: list file}`` for the splits whose list file exists; an error naming the
    expected files when none does."""
    found = {s: p for s, name in files.items() if (p := find_file(root, name, also))}
    if not found:
        looked = ", ".join(f"{s}: {n}" for s, n in files.items())
        raise ClapkitError(f"{dataset}: none of the annotation lists was found under {root} or "
                           f"the working directory ({looked}); set `annotations` in the "
                           f"dataset section to their paths")
    return found


def clip_path(root: Path, rel: str) -> Path:
    """``root/rel``; when that is absent and ``rel`` starts with root's own folder name
    (``CAER/train/...`` with root ``.../CAER``), that segment is dropped."""
    p = root / rel
    parts = Path(rel).parts
    if not p.exists() and len(parts) > 1 and parts[0] == root.name:
        alt = root.joinpath(*parts[1:])
        if alt.exists() or alt.with_suffix("").exists():
            return alt
    return p


def optional_file(root: Path, name: str | None) -> Path | None:
    """An optional side file (box JSON): found like :func:`find_file`; when absent, the
    path it would have under ``root`` (so messages can name it); None when not configured."""
    if name is None or name == "":
        return None
    return find_file(root, name) or (root / name if not Path(name).is_absolute()
                                     else Path(name))
