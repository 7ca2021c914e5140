"""Where a manifest row may read from: one policy, decided before anything is fetched.

A row may read from
- the manifest's own storage: for a local manifest, its folder and everything below it (after
  `..` and symlinks are resolved); for any other protocol, the manifest's bucket (container, host)
  under the same protocol (`s3://bucket/...` for `s3://bucket/catalog/m.parquet`);
- the prefixes the configuration allows (`--allow-uri PREFIX`, `allow_uri:` in YAML).

HTTP(S) is never implied, not even by an HTTP manifest: only an allowed prefix opens it. A prefix
matches whole path segments (`/data/a` allows `/data/a/x`, not `/data/ab`; `s3://bucket` not
`s3://bucket-evil`); `SCHEME://` alone allows that whole protocol (`s3://`: any bucket). Schemes and
HTTP hosts compare case-insensitively (default ports made explicit), paths and keys exactly.

A URI is allowed only if every way of reading it stays inside: as written and percent-decoded, with
backslashes as written and as `/`, with `..` kept literally (object-store keys) and resolved (file
systems, HTTP servers). So `%2e%2e`, `a\\..\\b` and `s3://evil/../bucket/x` are refused. Chained fsspec
URLs (`a::b`), URLs with credentials (`http://user@host/`), percent-encoded hosts and control
characters are refused outright.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

from harmony_ops.remote import HTTP_PROTOCOLS

LOCAL = "file"
# Names of one store: s3fs serves s3a, gcsfs gcs, adlfs abfs(s).
ALIASES = {"local": LOCAL, "s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az"}
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
DEFAULT_PORTS = {"http": 80, "https": 443}
HINT = "pass --allow-uri PREFIX (allow_uri in YAML) to allow it"


class Refused(ValueError):
    """A URI the policy cannot read safely, with the reason."""


@dataclass(frozen=True)
class Location:
    """One reading of a URI: protocol, HTTP authority (host:port; empty elsewhere), path segments."""

    scheme: str
    authority: str
    segments: tuple[str, ...]

    def within(self, root: "Location") -> bool:
        if self.scheme != root.scheme or (root.authority and root.authority != self.authority):
            return False
        return self.segments[: len(root.segments)] == root.segments

    def text(self) -> str:
        path = "/".join(self.segments)
        if self.scheme == LOCAL:
            return "/" + path
        return f"{self.scheme}://{self.authority + ('/' if self.authority and path else '') + path}"


def _scheme(uri: str) -> tuple[str, str]:
    """(normalised scheme, rest); plain paths (and fsspec's one-letter 'protocols') are local."""
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        if len(scheme) > 1:
            if not SCHEME.fullmatch(scheme):
                raise Refused(f"{scheme!r} is not a URI scheme")
            scheme = scheme.lower()
            return ALIASES.get(scheme, scheme), rest
    return LOCAL, uri


def _segments(path: str, resolve_dots: bool) -> tuple[str, ...]:
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == ".." and resolve_dots:
            if out:
                out.pop()
            continue
        out.append(part)
    return tuple(out)


# The readings a fetcher (or a server behind it) may give one URI: as written, percent-decoded,
# with backslashes as slashes, both. Applied to the part after the scheme, alike to URIs and roots.
TRANSFORMS = (
    lambda s: s,
    unquote,
    lambda s: s.replace("\\", "/"),
    lambda s: unquote(s).replace("\\", "/"),
)


def _local_path(path: str, dirs: dict | None = None) -> str:
    """The absolute, symlink-free path fsspec's LocalFileSystem opens for `path` (`~` expanded as it
    does). `dirs` caches the real paths of folders (rows share them; a manifest has many rows)."""
    from fsspec.implementations.local import make_path_posix

    path = make_path_posix(path)
    head, tail = os.path.split(path)
    if dirs is None or tail in ("", ".", "..") or not head:
        return os.path.realpath(path)
    if head not in dirs:
        dirs[head] = os.path.realpath(head)
    real = os.path.join(dirs[head], tail)
    return os.path.realpath(real) if os.path.islink(real) else real


def _authority(scheme: str, url: str):
    """(host:port, split URL) of an HTTP(S) URL; raises Refused for one whose host is not plain."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise Refused("credentials (user@) in an HTTP(S) URL")
    if "%" in parts.netloc or not parts.hostname:
        raise Refused("no plain host name in the HTTP(S) URL")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise Refused(f"bad port in the HTTP(S) URL: {exc}") from None
    return f"{parts.hostname.lower()}:{port}", parts


def _readings(scheme: str, rest: str, dirs: dict | None = None) -> set[Location]:
    """Where `scheme://rest` may be read from: `..` resolved (file systems, HTTP servers normalise
    it) and, for object stores and HTTP, also kept (keys may hold `..`; the first names the bucket)."""
    if scheme == LOCAL:
        return {Location(LOCAL, "", _segments(_local_path(rest, dirs), resolve_dots=True))}
    if scheme in HTTP_PROTOCOLS:
        authority, parts = _authority(scheme, f"{scheme}://{rest}")
        return {Location(scheme, authority, _segments(parts.path, dots)) for dots in (False, True)}
    return {Location(scheme, "", _segments(rest, dots)) for dots in (False, True)}


def _check_text(uri: str) -> None:
    if not isinstance(uri, str) or not uri.strip():
        raise Refused("not a URI")
    if CONTROL.search(uri):
        raise Refused("control characters in the URI")
    if "::" in uri:
        raise Refused("chained fsspec URLs (`a::b`) are not allowed")


def locations(uri: str, dirs: dict | None = None) -> list[set[Location]]:
    """Every reading of `uri`, one set per transform (see TRANSFORMS). Raises Refused for URIs that
    no prefix can allow."""
    _check_text(uri)
    scheme, rest = _scheme(uri)
    forms = [t(rest) for t in TRANSFORMS]
    found = {f: _readings(scheme, f, dirs) for f in set(forms)}
    return [found[f] for f in forms]


def _prefix_root(scheme: str, rest: str) -> Location:
    """A prefix as the operator means it: `..` resolved; `SCHEME://` alone is the whole protocol."""
    if scheme == LOCAL:
        return Location(LOCAL, "", _segments(_local_path(rest), resolve_dots=True))
    if not rest.strip("/"):
        return Location(scheme, "", ())
    if scheme in HTTP_PROTOCOLS:
        authority, parts = _authority(scheme, f"{scheme}://{rest}")
        if parts.query or parts.fragment:
            raise Refused("a prefix has no query or fragment")
        return Location(scheme, authority, _segments(parts.path, resolve_dots=True))
    return Location(scheme, "", _segments(rest, resolve_dots=True))


def parse_prefix(prefix: str) -> list[Location]:
    """An allowed prefix, one Location per transform. Raises ValueError (naming it) when it cannot be
    matched safely."""
    try:
        _check_text(prefix)
        scheme, rest = _scheme(prefix.strip())
        return [_prefix_root(scheme, t(rest)) for t in TRANSFORMS]
    except Refused as exc:
        raise ValueError(f"allowed prefix {prefix!r}: {exc}") from None


def _folder(path: str) -> str:
    return (path.rsplit("/", 1)[0] or "/") if "/" in path else "."


def storage_root(manifest_uri: str) -> list[Location] | None:
    """What a manifest implies, one Location per transform: its local folder, or its protocol and
    first component (bucket, container, host); an HTTP(S) or chained manifest implies nothing."""
    try:
        _check_text(manifest_uri)
        scheme, rest = _scheme(manifest_uri)
    except Refused:
        return None
    if scheme in HTTP_PROTOCOLS:
        return None
    out = []
    for t in TRANSFORMS:
        if scheme == LOCAL:
            out.append(Location(LOCAL, "", _segments(_local_path(_folder(t(rest))), resolve_dots=True)))
        else:
            first = _segments(t(rest), resolve_dots=False)[:1]
            if not first:
                return None
            out.append(Location(scheme, "", first))
    return out


@dataclass(frozen=True)
class AccessPolicy:
    """Where the rows of the manifest at `manifest_uri` may read from, given the allowed prefixes
    (`implied=False`: only the prefixes count)."""

    manifest_uri: str
    allow: tuple[str, ...] = ()
    implied: bool = True

    def __post_init__(self):
        object.__setattr__(self, "allow", tuple(self.allow or ()))
        root = storage_root(self.manifest_uri) if self.implied else None
        roots = ([root] if root else []) + [parse_prefix(p) for p in self.allow]
        object.__setattr__(self, "_root", root)
        # Per transform, the roots a reading must fall within (usually one tuple for all four).
        object.__setattr__(self, "_by_transform", [tuple(r[i] for r in roots) for i in range(len(TRANSFORMS))])
        object.__setattr__(self, "_roots", roots)
        object.__setattr__(self, "_dirs", {})

    def refusal(self, uri: str) -> str | None:
        """Why `uri` may not be read (None when it may)."""
        try:
            readings = locations(uri, self._dirs)
        except Refused as exc:
            return str(exc)
        checks = {(loc, roots) for locs, roots in zip(readings, self._by_transform) for loc in locs}
        outside = [loc for loc, roots in checks if not any(loc.within(r) for r in roots)]
        if not outside:
            return None
        if any(loc.scheme in HTTP_PROTOCOLS for loc in outside):
            if any(root[0].scheme in HTTP_PROTOCOLS for root in self._roots):
                return f"outside the allowed HTTP(S) prefixes; {HINT}"
            return f"HTTP(S) sources are read only under an allowed prefix; {HINT}"
        where = f"the manifest's storage ({self._root[0].text()})" if self._root else "the manifest's storage"
        return f"outside {where} and the allowed prefixes; {HINT}"

    def allows(self, uri: str) -> bool:
        return self.refusal(uri) is None


@lru_cache(maxsize=64)
def policy_for(manifest_uri: str, allow: tuple[str, ...]) -> AccessPolicy:
    """A policy per (manifest, prefixes), built once per process (workers check rows one by one)."""
    return AccessPolicy(manifest_uri, allow)


def checkpoint_refusal(uri: str, allow) -> str | None:
    """Checkpoints are named by the operator, so any protocol is theirs to choose, except HTTP(S),
    which needs an allowed prefix as row sources do."""
    try:
        if not isinstance(uri, str) or _scheme(uri)[0] not in HTTP_PROTOCOLS:
            return None
    except Refused:
        return None  # not a URI scheme: a local path
    if AccessPolicy("", tuple(allow or ()), implied=False).allows(uri):
        return None
    return f"HTTP(S) checkpoints are read only under an allowed prefix; {HINT}"
