"""Resolve archive member paths against the symlinks the archive itself creates, the way the file system will.

A lexical check reads each link alone: `a -> .`, `a/b -> ..` and `c -> a/b/..` each stay inside. But `a/b` is
created *through* `a`, so it sits at `b` and points above the extraction folder, and `c/x` is then written two
levels up. `Tree` replays the members in archive order on an in-memory model of the folder (only the links
matter: a plain folder or file never redirects a path) and resolves every path component by component, following
links like `realpath` does, so such a chain is refused before anything is written.
"""

from __future__ import annotations

MAX_HOPS = 40  # the kernel's limit on links followed in one path lookup


class Outside(Exception):
    """A path resolves above the extraction folder."""


class LinkLoop(Exception):
    """Following the links of a path never ends."""


class Tree:
    """The links an archive has created so far, by their resolved location (a tuple of path parts)."""

    def __init__(self) -> None:
        self.links: dict[tuple[str, ...], str] = {}

    def resolve(self, parts: list[str], follow_last: bool = True) -> tuple[str, ...]:
        """Where `parts` (relative to the folder) really leads; raises Outside or LinkLoop."""
        todo = [p for p in parts if p not in ("", ".")]
        out: list[str] = []
        hops = 0
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not out:
                    raise Outside(f"{'/'.join(parts)!r} climbs above it")
                out.pop()
                continue
            here = (*out, part)
            target = self.links.get(here)
            if target is not None and (todo or follow_last):
                hops += 1
                if hops > MAX_HOPS:
                    raise LinkLoop("/".join(parts))
                if target.startswith("/"):
                    raise Outside(f"{'/'.join(here)} -> {target}")
                todo = target.replace("\\", "/").split("/") + todo  # relative to the folder holding the link
                continue
            out.append(part)
        return tuple(out)

    def add_link(self, name: str, target: str) -> None:
        """Record a symlink member; its target must resolve inside from where the link really lands."""
        parts = name.split("/")
        at = (*self.resolve(parts[:-1]), parts[-1])
        try:
            self.resolve([*at[:-1], *target.replace("\\", "/").split("/")])
        except Outside as exc:
            raise Outside(f"the link lands at {'/'.join(at)!r}") from exc
        self.links[at] = target

    def check_write(self, name: str) -> tuple[str, ...]:
        """Where a file or folder member lands (a link already at that path is followed, as `open` does)."""
        return self.resolve(name.split("/"))

    def check_path(self, name: str) -> tuple[str, ...]:
        return self.resolve(name.split("/"))

    def check_links(self) -> None:
        """Every link again, with all members in place: a later link may redirect an earlier one's target."""
        for at, target in self.links.items():
            try:
                self.resolve([*at[:-1], *target.replace("\\", "/").split("/")])
            except Outside as exc:
                raise Outside(f"{'/'.join(at)!r} -> {target!r}: {exc}") from exc
