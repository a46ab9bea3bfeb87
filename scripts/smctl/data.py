"""``smctl data fetch|verify|upload``: get the dog-breed dataset, check it, put it on S3.

- ``fetch`` downloads the zip (``--url`` or ``data_url`` setting; default: the seed's
  dogImages.zip), extracts it safely and verifies it.
- ``verify`` counts classes and images per split (``train``/``valid``/``test``) and decodes
  every image with :func:`imgclf.images.decode_image` - the decoder training and serving use -
  to list unreadable files (the real set has a truncated ``Leonberger_06571.jpg``). It exits 1
  when it finds problems, so scripts notice.
- ``upload`` sends any image-folder dataset to S3 (``s3://BUCKET/PREFIX/data/NAME/`` by
  default) with a progress line, skipping the files ``verify`` rejects.

    smctl data fetch --dest data/
    smctl data verify data/dogImages
    smctl data upload data/dogImages
"""

from __future__ import annotations

import mimetypes
import os
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from smctl.aws import Api
from smctl.config import Settings, save_state
from smctl.errors import ConfigError, SmctlError
from smctl.util import print_table, split_s3

SPLITS = ("train", "valid", "test")


def add_parser(sub, parents) -> None:
    p = sub.add_parser("data", help="fetch, verify and upload image-folder datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="{fetch,verify,upload}")

    f = dsub.add_parser("fetch", parents=parents, help="download + extract + verify the dataset zip")
    f.add_argument("--url", dest="data_url", help="zip URL (default: the data_url setting, the "
                                                  "seed's dogImages.zip)")
    f.add_argument("--dest", type=Path, default=Path("data"), help="folder to extract into "
                                                                    "(default: data/)")
    f.add_argument("--force", action="store_true", help="download again even if the zip is there")
    f.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="decoding threads for verify (default: CPU count)")
    f.set_defaults(func=run_fetch)

    v = dsub.add_parser("verify", parents=parents, help="count images per split, list unreadable files")
    v.add_argument("dir", type=Path, help="dataset folder (train/ valid/ test/ of class folders)")
    v.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="decoding threads (default: CPU count)")
    v.set_defaults(func=run_verify)

    u = dsub.add_parser("upload", parents=parents, help="upload an image-folder dataset to S3")
    u.add_argument("dir", type=Path, help="dataset folder")
    u.add_argument("--s3", metavar="S3_URI", help="destination prefix (default: "
                                                  "s3://BUCKET/PREFIX/data/<folder name>)")
    u.add_argument("--jobs", type=int, default=8, help="parallel uploads (default: 8)")
    u.add_argument("--no-verify", action="store_true",
                   help="upload every image file without decoding it first")
    u.add_argument("--include-bad", action="store_true", help="also upload unreadable files")
    u.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="decoding threads for the verify step (default: CPU count)")
    u.set_defaults(func=run_upload)


# -- progress ------------------------------------------------------------------------------
class Progress:
    """One updating line on a terminal; every ~10% otherwise (CI logs)."""

    def __init__(self, what: str, total: int, unit: str = "", out=None):
        self.what, self.total, self.unit = what, total, unit
        self.out = out or sys.stderr
        self.done = 0
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()
        self._last_t = 0.0
        self._last_decile = -1
        self._lock = threading.Lock()

    def add(self, n: int, extra: str = "") -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            decile = int(10 * self.done / self.total) if self.total else 10
            if self.tty and (now - self._last_t > 0.2 or self.done >= self.total):
                self._last_t = now
                print(f"\r{self._line(extra)}", end="", file=self.out, flush=True)
            elif not self.tty and decile != self._last_decile:
                self._last_decile = decile
                print(self._line(extra), file=self.out, flush=True)

    def _line(self, extra: str) -> str:
        total = f"/{self.total}" if self.total else ""
        pct = f" {100 * self.done / self.total:5.1f}%" if self.total else ""
        return f"{self.what}: {self.done}{total}{self.unit}{pct}{extra}"

    def close(self) -> None:
        if self.tty:
            print(file=self.out, flush=True)


# -- verify -----------------------------------------------------------------------------------
@dataclass
class SplitReport:
    name: str
    classes: dict[str, int] = field(default_factory=dict)  # class -> readable images
    bad: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(self.classes.values())


@dataclass
class Report:
    root: Path
    splits: list[SplitReport]
    problems: list[str]

    @property
    def bad(self) -> list[tuple[Path, str]]:
        return [b for s in self.splits for b in s.bad]


def split_dirs(root: Path) -> list[tuple[str, Path]]:
    """(split, folder) pairs: train/valid/test if present, else the root as one split."""
    found = [(s, root / s) for s in SPLITS if (root / s).is_dir()]
    return found or [(root.name, root)]


def find_dataset_root(dest: Path) -> Path:
    """The folder holding train/valid/test under ``dest`` (dogImages.zip has one top folder)."""
    for cand in [dest, *sorted(p for p in dest.iterdir() if p.is_dir())]:
        if any((cand / s).is_dir() for s in SPLITS):
            return cand
    return dest


def _check(path: Path) -> str | None:
    from imgclf.images import ImageDecodeError, decode_image
    try:
        decode_image(path, draft_size=64)  # full read; JPEG decodes at reduced scale (fast)
        return None
    except ImageDecodeError as e:
        return str(e)
    except OSError as e:
        return f"cannot read: {e.strerror or e}"


def verify(root: Path, workers: int = 2, log=None) -> Report:
    from imgclf.layout import is_image_file
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder")
    splits: list[SplitReport] = []
    problems: list[str] = []
    jobs: list[tuple[SplitReport, str, Path]] = []
    for split, folder in split_dirs(root):
        rep = SplitReport(split)
        splits.append(rep)
        for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
            rep.classes[cls.name] = 0
            for f in sorted(cls.rglob("*")):
                if f.is_file() and is_image_file(f.name):
                    jobs.append((rep, cls.name, f))
    progress = Progress(f"verifying {root}", len(jobs), " images", out=log)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for (rep, cls, f), err in zip(jobs, pool.map(lambda j: _check(j[2]), jobs)):
            if err is None:
                rep.classes[cls] += 1
            else:
                rep.bad.append((f, err))
            progress.add(1)
    progress.close()

    present = [s.name for s in splits]
    if set(present) & set(SPLITS) and set(present) != set(SPLITS):
        problems.append(f"missing split(s): {', '.join(s for s in SPLITS if s not in present)}")
    for s in splits:
        if not s.classes:
            problems.append(f"{s.name}: no class folders")
        empty = [c for c, n in s.classes.items() if n == 0]
        if empty:
            problems.append(f"{s.name}: {len(empty)} class(es) without a readable image: "
                            f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}")
    if len(splits) > 1:
        ref = set(splits[0].classes)
        for s in splits[1:]:
            if set(s.classes) != ref:
                diff = sorted(ref ^ set(s.classes))
                problems.append(f"{s.name}: classes differ from {splits[0].name}: "
                                f"{', '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}")
    return Report(root, splits, problems)


def print_report(rep: Report, out=None) -> None:
    out = out or sys.stdout
    print_table([[s.name, len(s.classes), s.images, len(s.bad)] for s in rep.splits],
                ["split", "classes", "images", "unreadable"], out=out)
    for path, reason in rep.bad:
        print(f"unreadable: {path}: {reason}", file=out)
    for p in rep.problems:
        print(f"problem: {p}", file=out)


def run_verify(args, settings: Settings, api: Api) -> int:
    rep = verify(args.dir, args.workers)
    print_report(rep)
    if rep.bad or rep.problems:
        print(f"{len(rep.bad)} unreadable file(s), {len(rep.problems)} problem(s); "
              "'smctl data upload' skips unreadable files")
        return 1
    return 0


# -- fetch -----------------------------------------------------------------------------------
def download(url: str, dest: Path, timeout: float = 60.0) -> None:
    tmp = dest.with_name(dest.name + ".part")
    req = urllib.request.Request(url, headers={"User-Agent": "smctl/0.1"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0)
            progress = Progress(f"downloading {url}", total // (1 << 20), " MB")
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
                progress.add(1)
            progress.close()
    except urllib.error.HTTPError as e:
        tmp.unlink(missing_ok=True)
        raise SmctlError(f"download failed: {url} answered {e.code} {e.reason}",
                         "check --url / SMCTL_DATA_URL") from None
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise SmctlError(f"download failed: {url}: {getattr(e, 'reason', e)}",
                         "check the network/proxy and --url") from None
    tmp.replace(dest)


def safe_extract(zip_path: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(zip_path) as zf:
            base = dest.resolve()
            for member in zf.infolist():
                target = (dest / member.filename).resolve()
                if base != target and base not in target.parents:
                    raise SmctlError(f"{zip_path}: entry {member.filename!r} escapes the folder",
                                     "refusing to extract an unsafe archive")
            names = [m for m in zf.namelist() if not m.startswith("__MACOSX/")]
            progress = Progress(f"extracting {zip_path.name}", len(names), " files")
            for name in names:
                zf.extract(name, dest)
                progress.add(1)
            progress.close()
    except zipfile.BadZipFile as e:
        raise SmctlError(f"{zip_path} is not a valid zip ({e})",
                         "delete it and run 'smctl data fetch --force'") from None


def run_fetch(args, settings: Settings, api: Api) -> int:
    url = settings.data_url
    dest: Path = args.dest
    name = Path(url.split("?", 1)[0]).name or "dataset.zip"
    zip_path = dest / name
    if api.dry_run:
        api.record("download", url=url, to=str(zip_path))
        api.record("extract", archive=str(zip_path), to=str(dest))
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    if args.force or not zip_path.is_file():
        download(url, zip_path)
    else:
        print(f"using {zip_path} (already downloaded; --force to fetch again)", file=sys.stderr)
    safe_extract(zip_path, dest)
    root = find_dataset_root(dest)
    rep = verify(root, args.workers)
    print_report(rep)
    save_state(data_dir=str(root))
    if rep.bad:
        print(f"{len(rep.bad)} unreadable file(s): 'smctl data upload {root}' skips them")
    print(f"dataset at {root}; next: smctl data upload {root}")
    return 1 if rep.problems else 0


# -- upload ----------------------------------------------------------------------------------
def upload_plan(root: Path, exclude: set[Path]) -> list[tuple[Path, str]]:
    from imgclf.layout import is_image_file
    files = []
    for f in sorted(root.rglob("*")):
        if f.is_file() and is_image_file(f.name) and f not in exclude:
            files.append((f, f.relative_to(root).as_posix()))
    return files


def run_upload(args, settings: Settings, api: Api) -> int:
    root: Path = args.dir
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder")
    dest = (args.s3 or settings.s3_uri("data", root.resolve().name)).rstrip("/")
    bucket, prefix = split_s3(dest)
    exclude: set[Path] = set()
    if not args.no_verify:
        rep = verify(root, args.workers)
        print_report(rep, out=sys.stderr)
        if rep.bad and not args.include_bad:
            exclude = {p for p, _ in rep.bad}
            print(f"skipping {len(exclude)} unreadable file(s)", file=sys.stderr)
    files = upload_plan(root, exclude)
    if not files:
        raise SmctlError(f"no image files under {root}")
    if not any((root / s).is_dir() for s in SPLITS):
        api.log(f"note: {root} has no train/valid/test folders: train with --single-channel")

    def key_of(rel: str) -> str:
        return f"{prefix}/{rel}" if prefix else rel

    if api.dry_run:
        api.call("s3", "head_bucket", Bucket=bucket)
        for f, rel in files:
            api.call("s3", "put_object", Bucket=bucket, Key=key_of(rel),
                     ContentType=mimetypes.guess_type(f.name)[0] or "application/octet-stream",
                     Body=f"<contents of {f}>")
        return 0

    api.call("s3", "head_bucket", Bucket=bucket)  # missing bucket / no access: fail before work
    s3 = api.client("s3")
    total_bytes = sum(f.stat().st_size for f, _ in files)
    progress = Progress(f"uploading to {dest}", len(files), " files")
    sent = [0]

    def put(item: tuple[Path, str]) -> None:
        f, rel = item
        with open(f, "rb") as body:
            s3.put_object(Bucket=bucket, Key=key_of(rel), Body=body,
                          ContentType=mimetypes.guess_type(f.name)[0] or "application/octet-stream")
        sent[0] += f.stat().st_size
        progress.add(1, f" ({sent[0] / 1e6:.1f}/{total_bytes / 1e6:.1f} MB)")

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for _ in pool.map(put, files):
            pass
    progress.close()
    save_state(data_uri=dest)
    print(f"uploaded {len(files)} files ({total_bytes / 1e6:.1f} MB) to {dest}/")
    print(f"next: smctl tune --data {dest}   (or smctl train --data {dest})")
    return 0
