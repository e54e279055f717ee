"""Where a dataset lives: embedded datasets, the paper's four, and any converted one.

``resolve_dataset_dir(name, data_path)`` returns the dataset folder ``.../NAME`` (holding
``NAME.inter``); RecBole's own ``data_path`` is its parent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recbole_perpeft.cache import ensure_writable, perpeft_home
from recbole_perpeft.data.mmdemo import generate_mmdemo
from recbole_perpeft.errors import DatasetNotFoundError

__all__ = ["DatasetNotFoundError", "list_datasets", "resolve_dataset_dir"]

EMBEDDED_DATASETS = ("ml-100k", "mmdemo")


@dataclass(frozen=True)
class PaperDataset:
    """One of the PerPEFT paper's datasets (statistics after the paper's filtering)."""

    name: str
    amazon_category: str
    users: int
    items: int


PAPER_DATASETS: dict[str, PaperDataset] = {
    d.name: d
    for d in (
        PaperDataset("toys_games", "Toys_and_Games", 19_026, 14_718),
        PaperDataset("sports_outdoors", "Sports_and_Outdoors", 25_363, 15_701),
        PaperDataset("beauty_care", "Beauty_and_Personal_Care", 45_490, 31_151),
        PaperDataset("arts", "Arts_Crafts_and_Sewing", 24_511, 18_884),
    )
}


def recbole_ml100k_dir() -> Path:
    """The ml-100k copy shipped inside RecBole's wheel (never downloaded)."""
    import recbole

    return Path(recbole.__file__).resolve().parent / "dataset_example" / "ml-100k"


def _has_dataset(folder: Path, name: str) -> bool:
    return (folder / f"{name}.inter").is_file()


def _writable(folder: Path) -> bool:
    try:
        ensure_writable(folder)
        return True
    except OSError:
        return False


def paper_dataset_instructions(name: str, data_path: str | Path | None = None) -> str:
    """How to obtain and convert one of the paper's datasets (both converter routes)."""
    d = PAPER_DATASETS[name]
    out = data_path if data_path is not None else "DATA_PATH"
    cat = d.amazon_category
    return (
        f"'{name}' is one of the PerPEFT paper's datasets (Amazon Reviews 2023 category {cat}; "
        f"{d.users:,} users / {d.items:,} items after the paper's filtering). It is not shipped; "
        "convert it into the data path with one of:\n"
        f"  1. from the PerPEFT authors' release (files {name}_final.txt, "
        f"{name}_item2id_final.pickle, {name}_texts_final.pickle, {name}_images/):\n"
        f"     python -m recbole_perpeft.data.convert perpeft-release RELEASE_DIR {name} "
        f"--out {out} --trust-pickles\n"
        "     (--trust-pickles: pickles can run code when loaded; use only files you trust)\n"
        "  2. from Amazon Reviews 2023 (https://amazon-reviews-2023.github.io/), files "
        f"{cat}.jsonl.gz and meta_{cat}.jsonl.gz:\n"
        f"     python -m recbole_perpeft.data.convert amazon2023 --reviews {cat}.jsonl.gz "
        f"--meta meta_{cat}.jsonl.gz --name {name} --out {out} --kcore 5\n"
        "     (downloads one image per item; the statistics will differ somewhat from the "
        "paper's, whose exact filtering is not published in full)"
    )


def list_datasets(data_path: str | Path | None) -> list[str]:
    """Embedded datasets plus every ``NAME`` with ``data_path/NAME/NAME.inter``, sorted."""
    names = set(EMBEDDED_DATASETS)
    if data_path is not None and Path(data_path).is_dir():
        for child in Path(data_path).iterdir():
            if child.is_dir() and _has_dataset(child, child.name):
                names.add(child.name)
    return sorted(names)


def resolve_dataset_dir(name: str, data_path: str | Path | None) -> Path:
    """The folder of dataset ``name`` (containing ``name.inter``), generating ``mmdemo`` if needed.

    * ``ml-100k``: ``data_path/ml-100k`` if present, else RecBole's embedded copy.
    * ``mmdemo``: ``data_path/mmdemo`` if present; else generated there when ``data_path`` is
      given and writable, else under ``$RECBOLE_PERPEFT_HOME/datasets/mmdemo``.
    * anything else: ``data_path/name`` if it holds ``name.inter``, else
      :class:`DatasetNotFoundError` (with conversion instructions for the paper's datasets).
    """
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise DatasetNotFoundError(f"invalid dataset name {name!r}")
    base = Path(data_path).expanduser() if data_path is not None else None
    if base is not None and _has_dataset(base / name, name):
        return base / name
    if name == "ml-100k":
        folder = recbole_ml100k_dir()
        if not _has_dataset(folder, name):
            raise DatasetNotFoundError(
                f"RecBole's embedded ml-100k is missing from {folder}"
            )
        return folder
    if name == "mmdemo":
        if base is not None and _writable(base):
            return generate_mmdemo(base / name)
        return generate_mmdemo(perpeft_home() / "datasets" / name)
    if name in PAPER_DATASETS:
        where = f"{base / name}" if base is not None else "no data_path given"
        raise DatasetNotFoundError(
            f"dataset '{name}' not found ({where}).\n"
            + paper_dataset_instructions(name, base)
        )
    if base is None:
        found = "no data_path given"
    elif not base.is_dir():
        found = f"data_path {base} does not exist"
    else:
        present = [n for n in list_datasets(base) if n not in EMBEDDED_DATASETS]
        found = f"datasets under {base}: {', '.join(present) if present else 'none'}"
    raise DatasetNotFoundError(
        f"dataset '{name}' not found: expected {base / name / (name + '.inter') if base else name + '.inter'} "
        f"under data_path. Embedded datasets: {', '.join(EMBEDDED_DATASETS)}; "
        f"the paper's datasets (convert first): {', '.join(PAPER_DATASETS)}; {found}. "
        "See docs/data.md for the layout and `python -m recbole_perpeft.data.convert --help`."
    )
