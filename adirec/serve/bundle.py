"""Model bundles: a trained run made self-contained for online serving.

``export_bundle(run_dir, out)`` writes a directory that a server can load without the training
data or the source code's data loaders:

    BUNDLE/
      manifest.json                 format + version, model, domains, item counts, index kinds,
                                    creation time, the user key scope, the number of items the
                                    model knows (``model_items``; ids above it were added later by
                                    :func:`adirec.serve.items.add_items`), the revision, and the
                                    sha256 + size of every other file
      config.json                   run config (model name and config, schema, data spec)
      model.safetensors             weights of both towers
      vocab/users.parquet           column ``key``: row r is the raw key of encoded user r + 1
      vocab/items.parquet           the same for items
      features/users.safetensors    user tables ``user/<field>`` (U+1, ...) and user-domain
                                    tables ``user_domain/<field>`` (D, U+1, ...)
      features/items.safetensors    item tables, likewise (kept so item vectors can be rebuilt)
      features/train.parquet        the training interactions (user, item, domain, weight,
                                    timestamp): the behaviour histories and the seen items
      domains/<d>/items.safetensors ``item_ids`` (n,) the domain's corpus, ``embeddings`` (n, O)
                                    its item vectors, ``popular_ids`` / ``popular_counts``
      domains/<d>/index.faiss       inner-product index over ``embeddings`` (labels = rows)

Format version 2 added ``user_key_scope``, ``model_items`` and ``revision`` to the manifest (and
allows item ids above ``model_items``); a version 1 bundle is migrated on load (see
:func:`migrate_manifest`).

Nothing is pickled: tensors are safetensors, tables Parquet, metadata JSON, so loading an
untrusted bundle cannot execute code. The bundle is written to a hidden temporary directory
beside ``out`` and renamed into place, so a failed export leaves nothing half-written, and
:func:`load_bundle` checks the manifest and every checksum before using a byte of it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.numpy import load_file as load_np, save_file as save_np

from adirec.data.batches import FeatureStore
from adirec.data.dataset import Interactions, MultiDomainData
from adirec.data.schema import Schema
from adirec.models.ensemble import EnsembleModel, RunModel
from adirec.utils import atomic_write_json, load_weights, publish_directory, save_weights, write_keys

FORMAT = "adirec-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1 is migrated on load
MANIFEST = "manifest.json"
#: user keys are the data's own ids ("global") or "<domain>:<id>" ("domain", e.g. XMRec markets)
KEY_SCOPES = ("global", "domain")
DOMAIN_KEY_SEPARATOR = ":"
INDEX_KINDS = ("flat", "hnsw", "ivf")


class BundleError(ValueError):
    """A bundle that cannot be loaded; the message names the file and what is wrong with it."""


@dataclass
class IndexConfig:
    """Which FAISS index each domain gets. All indexes rank by inner product.

    Attributes:
        exact_max_items: corpora with at most this many items get an exact ``IndexFlatIP``
            (scores and order equal to offline evaluation); larger ones get ``ann``.
        ann: approximate index for large corpora, ``"hnsw"`` or ``"ivf"``.
        hnsw_m: neighbours per node of the HNSW graph.
        hnsw_ef_construction: candidate list size while building the graph.
        hnsw_ef_search: candidate list size while searching (raised to k when k is larger).
        ivf_nlist: number of IVF cells; 0 chooses about ``4 * sqrt(n)``.
        ivf_nprobe: cells visited per query.
        ivf_train_points: k-means training sample per cell (capped at the corpus size).
        seed: seeds the k-means training sample.
    """

    exact_max_items: int = 100_000
    ann: str = "ivf"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 64
    hnsw_ef_search: int = 256
    ivf_nlist: int = 0
    ivf_nprobe: int = 256
    ivf_train_points: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ann not in ("hnsw", "ivf"):
            raise ValueError(f"ann must be 'hnsw' or 'ivf', got {self.ann!r}")
        for name in ("exact_max_items", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search",
                     "ivf_nprobe", "ivf_train_points"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.ivf_nlist, int) or self.ivf_nlist < 0:
            raise ValueError(f"ivf_nlist must be an int >= 0 (0 = automatic), got {self.ivf_nlist!r}")

    def kind_for(self, n: int) -> str:
        return "flat" if n <= self.exact_max_items else self.ann

    def nlist_for(self, n: int) -> int:
        nlist = self.ivf_nlist or int(4 * np.sqrt(n))
        return max(1, min(nlist, n // 39 or 1))  # FAISS wants >= 39 training points per cell


def build_index(vectors: np.ndarray, config: IndexConfig) -> tuple[faiss.Index, dict]:
    """Inner-product index over ``vectors`` (n, O) float32, labels 0..n-1; (index, description)."""
    n, dim = vectors.shape
    kind = config.kind_for(n)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    index: faiss.Index
    info: dict[str, str | int]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        info = {"kind": "flat"}
    elif kind == "hnsw":
        index = hnsw = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = config.hnsw_ef_construction
        hnsw.hnsw.efSearch = config.hnsw_ef_search
        info = {"kind": "hnsw", "m": config.hnsw_m, "ef_construction": config.hnsw_ef_construction,
                "ef_search": config.hnsw_ef_search}
    else:
        nlist = config.nlist_for(n)
        index = ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = min(n, nlist * config.ivf_train_points)
        rows = np.sort(np.random.default_rng(config.seed).choice(n, sample, replace=False))
        ivf.train(x[rows])
        ivf.nprobe = min(config.ivf_nprobe, nlist)
        info = {"kind": "ivf", "nlist": nlist, "nprobe": int(ivf.nprobe)}
    index.add(x)
    return index, info


# --------------------------------------------------------------------------- export
def export_bundle(run_dir: str | Path, out: str | Path, *, index_config: IndexConfig | None = None,
                  data: MultiDomainData | None = None, overwrite: bool = False, data_source: str | None = None,
                  allow_incomplete: bool = False) -> Path:
    """Export a finished run (see :mod:`adirec.runs`) as a serving bundle at ``out``
    (``data_source`` and ``allow_incomplete`` as in :func:`adirec.runs.load_run`)."""
    from adirec.runs import load_run
    model, data, cfg = load_run(run_dir, data, data_source=data_source, allow_incomplete=allow_incomplete)
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return write_bundle(out, model, data, model_name=cfg["model"], run_config=cfg,
                        index_config=index_config, overwrite=overwrite,
                        extra={"source_run": str(run_dir.resolve()), "best_epoch": summary.get("best_epoch")})


@torch.no_grad()
def write_bundle(out: str | Path, model: RunModel, data: MultiDomainData, *, model_name: str,
                 run_config: dict | None = None, index_config: IndexConfig | None = None,
                 item_vectors: list[np.ndarray] | None = None, overwrite: bool = False,
                 extra: dict | None = None) -> Path:
    """Write ``model`` + the serving side of ``data`` as a bundle, atomically.

    ``item_vectors`` (one ``(len(data.corpus[d]), O)`` array per domain) replaces the item tower's
    vectors; it exists for synthetic benchmarks and is recorded in the manifest. Normally the
    vectors are the model's, computed exactly as offline evaluation does.
    """
    from adirec.train.loop import TwoTowerScorer
    out = Path(out)
    index_config = index_config or IndexConfig()
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
        check_replaceable(out)
    scope = data.meta.get("user_key_scope", "global")
    if scope not in KEY_SCOPES:
        raise ValueError(f"data.meta['user_key_scope'] must be one of {KEY_SCOPES}, got {scope!r}")
    if item_vectors is not None and len(item_vectors) != data.num_domains:
        raise ValueError(f"item_vectors has {len(item_vectors)} domains, data has {data.num_domains}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        model.eval()
        run_config = dict(run_config or {})
        run_config.setdefault("model", model_name)
        if not isinstance(model, EnsembleModel):  # an ensemble's run config lists its members' configs
            run_config["model_config"] = asdict(model.config)
        run_config["schema"] = data.schema.to_dict()
        run_config["domains"] = list(data.domains)
        run_config["index_config"] = asdict(index_config)
        atomic_write_json(tmp / "config.json", run_config)
        save_weights(model, tmp / "model.safetensors")
        (tmp / "vocab").mkdir()
        write_keys(tmp / "vocab" / "users.parquet", data.user_keys)
        write_keys(tmp / "vocab" / "items.parquet", data.item_keys)
        (tmp / "features").mkdir()
        user_t = {f"user/{k}": v for k, v in data.user_table.items()}
        user_t |= {f"user_domain/{k}": v for k, v in data.user_domain_table.items()}
        item_t = {f"item/{k}": v for k, v in data.item_table.items()}
        item_t |= {f"item_domain/{k}": v for k, v in data.item_domain_table.items()}
        save_np({k: np.ascontiguousarray(v) for k, v in user_t.items()}, str(tmp / "features" / "users.safetensors"))
        save_np({k: np.ascontiguousarray(v) for k, v in item_t.items()}, str(tmp / "features" / "items.safetensors"))
        tr = data.splits["train"]
        pq.write_table(pa.table({c: getattr(tr, c) for c in ("user", "item", "domain", "weight", "timestamp")}),
                       tmp / "features" / "train.parquet")
        scorer = None if item_vectors is not None else TwoTowerScorer(model, FeatureStore(data), data.num_items)
        pos = tr.weight > 0
        domains_info = {}
        for d, name in enumerate(data.domains):
            corpus = np.asarray(data.corpus[d], dtype=np.int64)
            if item_vectors is None:
                assert scorer is not None  # made above when no vectors are given
                vec = scorer.item_matrix(d)[torch.from_numpy(corpus).to(scorer.device)].cpu().numpy()  # (n, O)
            else:
                vec = np.asarray(item_vectors[d], dtype=np.float32)
                if vec.shape[0] != len(corpus):
                    raise ValueError(f"item_vectors[{d}] has {vec.shape[0]} rows, domain {name!r} has "
                                     f"{len(corpus)} items")
            vec = np.ascontiguousarray(vec, dtype=np.float32)
            if not np.all(np.isfinite(vec)):
                raise ValueError(f"domain {name!r}: item vectors contain NaN or infinity")
            # popular items: training positives per item in this domain, most first, ties by id
            counts = np.bincount(tr.item[pos & (tr.domain == d)], minlength=data.num_items + 1)[corpus]
            order = np.lexsort((corpus, -counts))
            ddir = tmp / "domains" / str(d)
            ddir.mkdir(parents=True)
            save_np({"item_ids": corpus, "embeddings": vec, "popular_ids": corpus[order],
                     "popular_counts": counts[order].astype(np.int64)}, str(ddir / "items.safetensors"))
            t0 = time.time()
            index, info = build_index(vec, index_config)
            faiss.write_index(index, str(ddir / "index.faiss"))
            info["build_seconds"] = round(time.time() - t0, 3)
            domains_info[name] = {"dir": f"domains/{d}", "items": len(corpus), "index": info}
        weights_sha = _sha256(tmp / "model.safetensors")
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": model_name, "model_version": f"{model_name}-{weights_sha[:12]}",
            "data": data.name, "domains": list(data.domains), "domain_info": domains_info,
            "num_users": data.num_users, "num_items": data.num_items, "model_items": data.num_items,
            "user_key_scope": scope, "revision": 0,
            "embedding_dim": int(model.vector_dim),
            "item_vectors": "model" if item_vectors is None else "supplied",
            **(extra or {}),
            "files": {p: {"sha256": _sha256(tmp / p), "bytes": (tmp / p).stat().st_size}
                      for p in _listing(tmp)},
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        _publish_permissions(tmp)
        _fsync_dir(tmp)
        publish_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_replaceable(out: Path) -> None:
    """Raise FileExistsError unless ``out`` is a directory recognised as a bundle by its manifest:
    ``--overwrite`` must never delete a run, a data set or anything else that happens to be there."""
    if out.is_symlink() or not out.is_dir():
        what = "a symbolic link" if out.is_symlink() else "a file"
        raise FileExistsError(f"{out} is {what}, not a bundle; --overwrite replaces bundles only: "
                              f"choose another --out or remove it yourself")
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        is_bundle = isinstance(manifest, dict) and manifest.get("format") == FORMAT
    except (OSError, ValueError):
        is_bundle = False
    if not is_bundle:
        entries = sorted(p.name for p in out.iterdir())
        shown = ", ".join(entries[:6]) + (f", ... ({len(entries)} entries)" if len(entries) > 6 else "")
        hint = ""
        if (out / "summary.json").is_file() or (out / "model.safetensors").is_file():
            hint = " (it looks like a training run)"
        elif any(p.suffix in (".parquet", ".tsv", ".csv") for p in out.iterdir()):
            hint = " (it looks like a data set)"
        raise FileExistsError(
            f"{out} is not a bundle (no {FORMAT} {MANIFEST}){hint}; it holds: {shown or 'nothing'}. "
            f"--overwrite replaces bundles only: choose another --out or remove it yourself")


def _listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _publish_permissions(root: Path) -> None:
    """Temporary files are private (0600); give the finished bundle the usual umask modes."""
    mask = os.umask(0)
    os.umask(mask)
    for p in [*root.rglob("*"), root]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def _fsync_dir(root: Path) -> None:
    for p in [*root.rglob("*"), root]:
        if p.is_dir():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


# ----------------------------------------------------------------------------- load
class KeyIndex:
    """Raw keys <-> encoded ids (0 = unknown). Keys are compared by their string form, so the
    JSON number 7 and the string "7" name the same user. Lookups go through a dict from key text
    to id: a lookup costs O(length of the key), whatever the vocabulary's size or its longest key."""

    def __init__(self, keys: pa.Array):
        self.is_int = pa.types.is_integer(keys.type)
        self._native = keys.to_numpy(zero_copy_only=False)  # (n,) raw keys of ids 1..n
        self._ids = {str(k): i for i, k in enumerate(self._native.tolist(), start=1)}
        self.longest = max(map(len, self._ids), default=0)  # characters of the longest key

    def __len__(self) -> int:  # real ids, 0 excluded
        return len(self._native)

    def get(self, key) -> int:
        """The id of one key (str or int), 0 when unknown."""
        return self._ids.get(key if isinstance(key, str) else str(key), 0)

    def encode(self, keys) -> np.ndarray:
        """(n,) int64 ids of ``keys`` (any of str / int), 0 where unknown."""
        return np.fromiter((self.get(k) for k in keys), dtype=np.int64, count=len(keys))

    def decode(self, ids: np.ndarray | list[int]) -> list:
        """Raw keys of ids >= 1 (Python ints or strings, as exported)."""
        return self._native[np.asarray(ids, dtype=np.int64) - 1].tolist()

    def object_keys(self) -> np.ndarray:
        """(n + 1,) object array with "<unk>" at 0, as in MultiDomainData."""
        out = np.empty(len(self._native) + 1, dtype=object)
        out[0] = "<unk>"
        out[1:] = self._native
        return out


@dataclass
class DomainIndex:
    """One domain's corpus, item vectors, FAISS index and popularity ranking."""

    name: str
    item_ids: np.ndarray  # (n,) encoded item id of each index row
    embeddings: np.ndarray  # (n, O) float32
    index: faiss.Index
    index_info: dict
    popular_ids: np.ndarray  # (n,) most popular first
    popular_counts: np.ndarray  # (n,)
    position: np.ndarray  # (I + 1,) int64: item id -> index row, -1 when not in this corpus

    @property
    def size(self) -> int:
        return len(self.item_ids)


@dataclass
class Bundle:
    """A loaded, verified bundle: everything a :class:`~adirec.serve.service.Recommender` needs."""

    path: Path
    manifest: dict
    config: dict
    model: RunModel
    data: MultiDomainData  # training split + feature tables only (valid/test are empty)
    store: FeatureStore
    users: KeyIndex
    items: KeyIndex
    domains: list[DomainIndex]
    seen_indptr: np.ndarray  # (U + 2,) CSR over users of their training positives (all domains)
    seen_rows: np.ndarray  # (P,) rows of the training split, by user, then time
    seen_items: np.ndarray  # (P,) the items of those rows

    @property
    def model_version(self) -> str:
        return self.manifest["model_version"]

    @property
    def user_key_scope(self) -> str:
        return self.manifest["user_key_scope"]

    @property
    def model_items(self) -> int:
        """Items the model was trained with; ids above were added by ``index add`` and use the
        unknown-id row of the item embedding."""
        return int(self.manifest["model_items"])

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.domains]

    def seen(self, user: int) -> np.ndarray:
        """Encoded items the user interacted with positively in training (any domain)."""
        return self.seen_items[self.seen_indptr[user]:self.seen_indptr[user + 1]]


def verify_bundle(path: str | Path) -> dict:
    """Check the manifest and every file's size and sha256; return the manifest or raise
    :class:`BundleError` naming each problem."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle directory (it does not exist or is a file)")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root}: no {MANIFEST}; not a bundle, or an export that did not finish")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath}: manifest is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{mpath}: not an {FORMAT} manifest (format={found!r})")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise BundleError(f"{mpath}: format_version {version!r} is not supported (this adirec reads "
                          f"{', '.join(map(str, READABLE_VERSIONS))}); re-export the run with this "
                          f"adirec (adirec export RUN_DIR --out BUNDLE)")
    required = ("model", "model_version", "domains", "domain_info", "files", "created_at")
    missing = [k for k in required if k not in manifest]
    if missing:
        raise BundleError(f"{mpath}: manifest lacks {missing}")
    files = manifest["files"]
    if not isinstance(files, dict):
        raise BundleError(f"{mpath}: 'files' must map paths to checksums")
    needed = {"config.json", "model.safetensors", "vocab/users.parquet", "vocab/items.parquet",
              "features/users.safetensors", "features/items.safetensors", "features/train.parquet"}
    for name in manifest["domains"]:
        info = manifest["domain_info"].get(name)
        if not isinstance(info, dict) or "dir" not in info:
            raise BundleError(f"{mpath}: domain {name!r} has no entry in domain_info")
        needed |= {f"{info['dir']}/items.safetensors", f"{info['dir']}/index.faiss"}
    unlisted = sorted(needed - set(files))
    if unlisted:
        raise BundleError(f"{mpath}: manifest does not list {unlisted}")
    problems = []
    for rel, meta in sorted(files.items()):
        p = root / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            problems.append(f"{rel}: path leaves the bundle")
        elif not p.is_file():
            problems.append(f"{rel}: missing")
        elif p.stat().st_size != meta.get("bytes"):
            size = p.stat().st_size
            what = "truncated" if size < meta.get("bytes", 0) else "has the wrong size"
            problems.append(f"{rel}: {what} ({size} bytes, manifest says {meta.get('bytes')})")
        elif _sha256(p) != meta.get("sha256"):
            problems.append(f"{rel}: sha256 mismatch (file is corrupted or was modified)")
    if problems:
        raise BundleError(f"{root}: bundle failed verification: " + "; ".join(problems))
    return migrate_manifest(manifest)


def migrate_manifest(manifest: dict) -> dict:
    """A manifest as format version 2 describes it. Version 1 lacked the user key scope (XMRec,
    the one source with domain-scoped keys, is recognised by the data name), ``model_items``
    (it had no added items) and ``revision``."""
    if manifest.get("format_version") == 1:
        manifest = dict(manifest)
        xmrec = str(manifest.get("data", "")).startswith("xmrec:")
        manifest.setdefault("user_key_scope", "domain" if xmrec else "global")
        manifest.setdefault("model_items", manifest.get("num_items"))
        manifest.setdefault("revision", 0)
        manifest["migrated_from"] = 1
        manifest["format_version"] = FORMAT_VERSION
    if manifest.get("user_key_scope") not in KEY_SCOPES:
        raise BundleError(f"manifest: user_key_scope must be one of {KEY_SCOPES}, "
                          f"got {manifest.get('user_key_scope')!r}")
    return manifest


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Load a bundle written by :func:`write_bundle`. With ``verify`` (the default) every checksum
    is checked first; any problem raises :class:`BundleError` with the file and the reason."""
    root = Path(path)
    if verify:
        manifest = verify_bundle(root)
    else:
        try:
            manifest = migrate_manifest(json.loads((root / MANIFEST).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise BundleError(f"{root}: cannot read {MANIFEST} ({e})") from None
    try:
        return _load(root, manifest)
    except BundleError:
        raise
    except Exception as e:  # a file that passed its checksum but does not fit the rest
        raise BundleError(f"{root}: bundle is inconsistent: {type(e).__name__}: {e}") from e


def _load(root: Path, manifest: dict) -> Bundle:
    config = json.loads((root / "config.json").read_text())
    schema = Schema.from_dict(config["schema"])
    domains = list(manifest["domains"])
    if config.get("domains") != domains:
        raise BundleError(f"{root}: config.json domains {config.get('domains')} differ from the manifest's {domains}")
    users = KeyIndex(pq.read_table(root / "vocab" / "users.parquet").column("key").combine_chunks())
    items = KeyIndex(pq.read_table(root / "vocab" / "items.parquet").column("key").combine_chunks())
    ut = load_np(str(root / "features" / "users.safetensors"))
    it = load_np(str(root / "features" / "items.safetensors"))
    t = pq.read_table(root / "features" / "train.parquet")
    train = Interactions(*(t.column(c).to_numpy() for c in ("user", "item", "domain", "weight", "timestamp")))
    dom: list[DomainIndex] = []
    corpus = []
    for name in domains:
        info = manifest["domain_info"][name]
        arrays = load_np(str(root / info["dir"] / "items.safetensors"))
        index = faiss.read_index(str(root / info["dir"] / "index.faiss"))
        ids, emb = arrays["item_ids"].astype(np.int64), arrays["embeddings"]
        if index.ntotal != len(ids) or emb.shape != (len(ids), index.d):
            raise BundleError(f"{root}: domain {name!r}: index holds {index.ntotal} vectors of width "
                              f"{index.d}, items file has {emb.shape}")
        if len(ids) and (ids.min() < 1 or ids.max() > len(items)):
            raise BundleError(f"{root}: domain {name!r}: item ids outside the item vocabulary")
        position = np.full(len(items) + 1, -1, dtype=np.int64)
        position[ids] = np.arange(len(ids))
        _apply_search_params(index, info.get("index", {}))
        dom.append(DomainIndex(name, ids, emb, index, info.get("index", {}), arrays["popular_ids"].astype(np.int64),
                               arrays["popular_counts"], position))
        corpus.append(ids)
    data = MultiDomainData(
        name=manifest.get("data", "bundle"), domains=domains, schema=schema,
        user_keys=users.object_keys(), item_keys=items.object_keys(), splits={"train": train},
        user_table={k[5:]: v for k, v in ut.items() if k.startswith("user/")},
        user_domain_table={k[12:]: v for k, v in ut.items() if k.startswith("user_domain/")},
        item_table={k[5:]: v for k, v in it.items() if k.startswith("item/")},
        item_domain_table={k[12:]: v for k, v in it.items() if k.startswith("item_domain/")},
        corpus=corpus, meta={"bundle": str(root)},
    )
    from adirec.runs import build_run_model
    model = build_run_model(config, schema, len(domains), source=str(root / "config.json"))
    load_weights(model, root / "model.safetensors")
    model.eval()
    if model.vector_dim != dom[0].embeddings.shape[1]:
        raise BundleError(f"{root}: model vector width {model.vector_dim} differs from the "
                          f"item vectors' {dom[0].embeddings.shape[1]}")
    model_items = int(manifest["model_items"])
    if not 1 <= model_items <= len(items) or len(data.item_table.get("item_id", ())) != len(items) + 1:
        raise BundleError(f"{root}: model_items {model_items} does not fit {len(items)} items")
    pos = np.flatnonzero(train.weight > 0)
    seen_rows = pos[np.lexsort((train.timestamp[pos], train.user[pos]))]  # by user, then time
    seen_indptr = np.zeros(data.num_users + 2, dtype=np.int64)
    np.cumsum(np.bincount(train.user[pos], minlength=data.num_users + 1), out=seen_indptr[1:])
    return Bundle(root, manifest, config, model, data, FeatureStore(data), users, items, dom,
                  seen_indptr, seen_rows, train.item[seen_rows])


def _apply_search_params(index: faiss.Index, info: dict) -> None:
    if info.get("kind") == "hnsw" and "ef_search" in info:
        cast(faiss.IndexHNSW, faiss.downcast_index(index)).hnsw.efSearch = int(info["ef_search"])
    elif info.get("kind") == "ivf" and "nprobe" in info:
        faiss.extract_index_ivf(index).nprobe = int(info["nprobe"])
