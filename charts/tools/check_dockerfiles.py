#!/usr/bin/env python3
"""Checks every Dockerfile of the workspace without a Docker daemon.

    check_dockerfiles.py CARGO_METADATA.json [ROOT]

ROOT (default: the current directory) holds the Dockerfiles and .dockerignore to check.

For each image (K8S-CONTRACT.md "Images"): <crate dir>/Dockerfile exists and
  * is multi-stage: a named build stage running `cargo build --release --locked -p PKG --bin BIN` for a
    package and binary that `cargo metadata` lists, with that package's manifest in that directory, and,
    when the package links jemalloc, installing make before that build;
  * its last stage is a small runtime image (distroless or debian slim) that copies the binary from the
    build stage to /usr/local/bin/BIN, runs as USER 65532:65532, EXPOSEs the component's ports and has
    ENTRYPOINT ["/usr/local/bin/BIN"];
and .dockerignore keeps target/ out of the build context and lets in every workspace member's top
directory (otherwise cargo cannot load the workspace inside the build) and .cargo/ when the workspace has a
cargo configuration (its build-time options must reach the images).
Prints one line per problem and exits 1 when there is any.
"""

import json
import os
import re
import sys

# directory, package, binary, image, ports it must EXPOSE
IMAGES = [
    ("registry", "ferry-registry", "ferry-registry", "ferry-registry", {28080}),
    ("router", "ferry-router", "ferry-router", "ferry-router", {15672, 15671}),
    ("adapters/mqtt", "ferry-mqtt-adapter", "ferry-mqtt-adapter", "ferry-mqtt-adapter", {1883, 8883}),
    ("adapters/http", "ferry-http-adapter", "ferry-http-adapter", "ferry-http-adapter", {8080, 8443}),
    ("operator", "ferry-operator", "ferry-operator", "ferry-operator", {9090}),
    ("cli", "ferry", "ferry", "ferry", {28080, 15672, 1883, 8080}),
]
RUNTIME_BASES = re.compile(r"^(gcr\.io/distroless/(cc|static)-debian1[2-9](:nonroot|:latest)?|(docker\.io/(library/)?)?debian:[a-z]+-slim)(@sha256:[0-9a-f]{64})?$")


def instructions(text):
    """Dockerfile instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    result, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        result.append((keyword.upper(), rest.strip()))
        current = ""
    return result


def check_image(root, binaries, needs_make, directory, package, binary, image, ports):
    problems = []
    path = os.path.join(root, directory, "Dockerfile")
    where = f"{directory}/Dockerfile"
    if not os.path.isfile(path):
        return [f"{where}: missing (image {image})"]
    if (package, binary) not in binaries:
        problems.append(f"{where}: the workspace has no binary {binary} in package {package} (cargo metadata)")
    elif binaries[(package, binary)] != os.path.normpath(directory):
        problems.append(f"{where}: package {package} lives in {binaries[(package, binary)]}, not {directory}")

    with open(path, encoding="utf-8") as f:
        steps = instructions(f.read())
    stages, current = [], None
    for keyword, rest in steps:
        if keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            current = {"base": words[0], "name": name, "steps": []}
            stages.append(current)
        elif current is not None:
            current["steps"].append((keyword, rest))
    if len(stages) < 2:
        return problems + [f"{where}: not multi-stage ({len(stages)} FROM)"]
    build = stages[0]
    runtime = stages[-1]
    if not build["name"]:
        problems.append(f"{where}: the build stage has no name (FROM ... AS build)")
    if not re.match(r"^(docker\.io/(library/)?)?rust:", build["base"]):
        problems.append(f"{where}: the build stage is not a rust image: {build['base']}")
    runs = " ".join(rest for keyword, rest in build["steps"] if keyword == "RUN")
    want = f"cargo build --release --locked -p {package} --bin {binary}"
    if want not in runs:
        problems.append(f"{where}: the build stage does not run `{want}`")
    if "--mount=type=cache" not in runs:
        problems.append(f"{where}: the cargo build uses no cache mounts")
    # tikv-jemalloc-sys runs jemalloc's configure and make; the slim rust image has a C compiler only.
    if package in needs_make:
        before = []
        for keyword, rest in build["steps"]:
            if keyword == "RUN" and want in rest:
                break
            if keyword == "RUN":
                before.append(rest)
        if not any(re.search(r"apt-get install\b.*\bmake\b", r) for r in before):
            problems.append(f"{where}: {package} builds jemalloc, but make is not installed before the cargo build")

    base = runtime["base"]
    if not RUNTIME_BASES.match(base):
        problems.append(f"{where}: runtime base {base} is not distroless or debian slim")
    rt = runtime["steps"]
    copies = [rest for keyword, rest in rt if keyword == "COPY"]
    target = f"/usr/local/bin/{binary}"
    if not any(f"--from={build['name']}" in c and c.split()[-1] == target for c in copies):
        problems.append(f"{where}: the runtime stage does not COPY --from={build['name']} the binary to {target}")
    users = [rest for keyword, rest in rt if keyword == "USER"]
    if not users or users[-1] != "65532:65532":
        problems.append(f"{where}: the runtime stage's last USER is {users[-1] if users else None!r}, want 65532:65532")
    exposed = set()
    for keyword, rest in rt:
        if keyword == "EXPOSE":
            for word in rest.split():
                exposed.add(int(word.split("/")[0]))
    if exposed != ports:
        problems.append(f"{where}: EXPOSE {sorted(exposed)}, want {sorted(ports)}")
    entry = [rest for keyword, rest in rt if keyword == "ENTRYPOINT"]
    if not entry:
        problems.append(f"{where}: no ENTRYPOINT")
    else:
        try:
            argv = json.loads(entry[-1])
        except json.JSONDecodeError:
            argv = None
        if not argv or argv[0] != target:
            problems.append(f"{where}: ENTRYPOINT {entry[-1]} does not start with {target!r} (exec form)")
    return problems


def dockerignore_problems(root, members):
    path = os.path.join(root, ".dockerignore")
    if not os.path.isfile(path):
        return [".dockerignore: missing"]
    with open(path, encoding="utf-8") as f:
        patterns = [l.strip() for l in f if l.strip() and not l.strip().startswith("#")]
    problems = []
    if not any(p.rstrip("/") in ("target", "**/target", "/target") for p in patterns if not p.startswith("!")):
        problems.append(".dockerignore: does not exclude target/")
    if "*" in patterns:  # an allow-list: every member's top directory must be let back in
        allowed = {p[1:].strip("/") for p in patterns if p.startswith("!")}
        for needed in ["Cargo.toml", "Cargo.lock"] + sorted(members):
            if needed not in allowed:
                problems.append(f".dockerignore: {needed} is not let in (!{needed}), so cargo cannot load the workspace")
        # The workspace's cargo configuration sets build-time options (jemalloc's, docs/decisions.md 23):
        # an image built without it would behave unlike the binaries that were measured.
        if os.path.isfile(os.path.join(root, ".cargo", "config.toml")) and ".cargo" not in allowed:
            problems.append(".dockerignore: .cargo is not let in (!.cargo/), so images build without the workspace's cargo configuration")
    return problems


def main():
    root = sys.argv[2] if len(sys.argv) > 2 else os.getcwd()
    with open(sys.argv[1], encoding="utf-8") as f:
        metadata = json.load(f)
    members = set(metadata["workspace_members"])
    binaries, member_dirs = {}, set()
    workspace_root = os.path.normpath(metadata["workspace_root"])
    for package in metadata["packages"]:
        if package["id"] not in members:
            continue
        directory = os.path.relpath(os.path.dirname(os.path.normpath(package["manifest_path"])), workspace_root)
        member_dirs.add(directory.split(os.sep)[0])
        for target in package["targets"]:
            if "bin" in target["kind"]:
                binaries[(package["name"], target["name"])] = directory
    # Members that link jemalloc (a C library built with make).
    needs_make = {
        package["name"]
        for package in metadata["packages"]
        if package["id"] in members
        and any(dep["name"] == "tikv-jemallocator" and dep.get("kind") is None for dep in package["dependencies"])
    }
    problems = []
    for image in IMAGES:
        problems += check_image(root, binaries, needs_make, *image)
    problems += dockerignore_problems(root, member_dirs)
    for p in problems:
        print(f"    {p}", file=sys.stderr)
    print(f"    {len(IMAGES)} Dockerfiles and .dockerignore checked; {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
