#!/usr/bin/python3
"""Checks deploy/docker/Dockerfile with what runs without a Docker engine:
  - dockerfile-utils (npm) lints it clean, and rejects a copy with a misspelt instruction;
  - shellcheck passes every RUN body (run as the Dockerfile's SHELL, its ARGs set);
  - every apt package it installs resolves to a Debian 12 (bookworm) candidate;
  - the runtime stage's packages are exactly the owners of the NEEDED libraries of the binaries
    it ships (built in BUILD_DIR/bin), plus the BLAS that libblas.so.3 resolves to;
  - the project's rules: multi-stage on Debian 12, exec-form ENTRYPOINT, a numeric non-root
    USER equal to the StatefulSet's runAsUser, EXPOSE equal to its container ports.
Not checked (no engine here): that the image builds and runs.

  check_docker.py BUILD_DIR
"""
import os
import re
import shlex
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCKERFILE = os.path.join(ROOT, "deploy", "docker", "Dockerfile")
STATEFULSET = os.path.join(ROOT, "deploy", "k8s", "base", "statefulset.yaml")

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def ok(msg):
    print("ok: " + msg)


def instructions(text):
    """(keyword, argument) per instruction, continuations joined and comment lines dropped."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, arg = current.partition(" ")
        out.append((keyword.upper(), arg.strip()))
        current = ""
    return out


def stages(instrs):
    """Per stage: its name, its ARGs with defaults, its RUN bodies and the instructions."""
    result, stage = [], None
    for keyword, arg in instrs:
        if keyword == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", arg, re.I)
            stage = {"from": m.group(1), "name": m.group(2), "args": {}, "runs": [], "all": []}
            result.append(stage)
            continue
        if stage is None:
            continue
        stage["all"].append((keyword, arg))
        if keyword == "ARG":
            name, _, default = arg.partition("=")
            stage["args"][name] = shlex.split(default)[0] if default else ""
        elif keyword == "RUN":
            stage["runs"].append(arg)
    return result


def lint(text):
    out = subprocess.run(["dockerfile-utils", "lint", DOCKERFILE], capture_output=True, text=True)
    if out.returncode == 0 and not out.stdout.strip():
        ok("dockerfile-utils lint: no problem")
    else:
        fail("dockerfile-utils lint:\n" + out.stdout + out.stderr)
    with tempfile.NamedTemporaryFile("w", suffix=".Dockerfile", delete=False) as f:
        f.write(text.replace("\nWORKDIR ", "\nWORKDIRR ", 1))
    bad = subprocess.run(["dockerfile-utils", "lint", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    if bad.returncode != 0 and "WORKDIRR" in bad.stdout:
        ok("dockerfile-utils rejects a misspelt instruction (WORKDIRR)")
    else:
        fail("dockerfile-utils accepted a misspelt instruction: the linter is not checking")


def shellcheck(all_stages):
    for st in all_stages:
        for i, body in enumerate(st["runs"]):
            script = "#!/bin/sh\nset -eu\n"
            for name, default in st["args"].items():
                script += f"export {name}={shlex.quote(default)}\n"  # ARGs are the env
            script += body + "\n"
            out = subprocess.run(["shellcheck", "--shell=sh", "-"], input=script,
                                 capture_output=True, text=True)
            where = f"stage {st['name']} RUN #{i + 1}"
            if out.returncode == 0:
                ok(f"shellcheck: {where}")
            else:
                fail(f"shellcheck {where}:\n{out.stdout}")


def package_lists(st):
    return {name: value.split() for name, value in st["args"].items() if name.endswith("PACKAGES")}


def resolvable(all_stages):
    for st in all_stages:
        for name, packages in package_lists(st).items():
            out = subprocess.run(["apt-cache", "policy"] + packages, capture_output=True,
                                 text=True).stdout
            sections = dict(re.findall(r"^(\S+):\n((?:\s+.*\n?)*)", out, re.M))
            missing = []
            for p in packages:
                section = sections.get(p, "")
                m = re.search(r"Candidate: (\S+)", section)
                if not m or m.group(1) == "(none)" or "bookworm" not in section:
                    missing.append(p)
                    fail(f"{name}: {p} has no Debian 12 (bookworm) candidate")
            if not missing:
                ok(f"{st['name']} {name}: all {len(packages)} packages resolve in Debian 12")


def owners_of(paths):
    """path -> the Debian package owning it (its real path; usrmerge aliases tried too)."""
    def aliases(p):
        real = os.path.realpath(p)
        other = real[4:] if real.startswith("/usr/") else "/usr" + real
        return [real, other, p]
    queries = sorted({a for p in paths for a in aliases(p)})
    out = subprocess.run(["dpkg", "-S"] + queries, capture_output=True, text=True).stdout
    owner = {}
    for line in out.splitlines():
        pkg, _, path = line.partition(": ")
        for p in path.split(", "):
            owner[p.strip()] = pkg.split(":")[0].strip()
    return {p: next((owner[a] for a in aliases(p) if a in owner), None) for p in paths}


def resolved_libraries(binary):
    """soname -> path, for the whole closure ldd resolves."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    libs = {}
    for line in out.stdout.splitlines():
        m = re.match(r"\s*(\S+) => (\S+)", line)
        if m and m.group(2).startswith("/"):
            libs[m.group(1)] = m.group(2)
        elif "not found" in line:
            fail(f"{binary}: {line.strip()}")
    return libs


def needed(binary):
    out = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True)
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out.stdout)


def shipped(runtime, build):
    for keyword, arg in build["all"]:
        if keyword == "RUN" and "/out/bin/" in arg:
            m = re.search(r"cp ((?:/build/bin/\S+\s+)+)/out/bin/", arg)
            if m:
                return [os.path.basename(p) for p in m.group(1).split()]
    return []


def runtime_packages(all_stages, build_dir):
    build = next(s for s in all_stages if s["name"] == "build")
    runtime = next(s for s in all_stages if s["name"] == "runtime")
    lists = package_lists(runtime)
    listed = set(lists.get("RUNTIME_PACKAGES", [])) | set(lists.get("DEBIAN_TORCH_PACKAGES", []))
    binaries = shipped(runtime, build)
    if not binaries:
        fail("cannot find the binaries the build stage copies to /out/bin")
        return
    direct, closure = {}, {}  # soname -> path
    for name in binaries:
        path = os.path.join(build_dir, "bin", name)
        if not os.path.isfile(path):
            fail(f"{path} is not built: build tandem first")
            continue
        libs = resolved_libraries(path)
        closure.update(libs)
        for soname in needed(path):
            if soname.startswith("ld-linux"):
                direct[soname] = "/lib64/" + soname
            elif soname not in libs:
                fail(f"{name}: NEEDED {soname} is not resolved by ldd")
            else:
                direct[soname] = libs[soname]
    blas = closure.get("libblas.so.3")
    package = owners_of(list(direct.values()) + ([blas] if blas else []))
    owners = {}
    for soname, path in direct.items():
        if package[path] is None:
            fail(f"{path} belongs to no Debian package")
        else:
            owners.setdefault(package[path], set()).add(soname)
    want = set(owners)
    if blas:
        want.add(package[blas])
    if want == listed:
        ok(f"the runtime packages are exactly the owners of {len(set().union(*owners.values()))} "
           f"NEEDED libraries of {', '.join(binaries)}, plus the BLAS "
           f"({package.get(blas)})")
    else:
        for p in sorted(want - listed):
            fail(f"runtime stage lacks {p} (owns {sorted(owners.get(p, {'libblas.so.3'}))})")
        for p in sorted(listed - want):
            fail(f"runtime stage installs {p}, which owns no library the binaries load")
    if "libtorch1.13" not in lists.get("DEBIAN_TORCH_PACKAGES", []):
        fail("DEBIAN_TORCH_PACKAGES must hold Debian's LibTorch (an official one replaces it)")


def project_rules(all_stages):
    if len(all_stages) < 2:
        fail("not a multi-stage build")
    base = all_stages[0]
    default_base = None
    with open(DOCKERFILE) as f:
        m = re.search(r"^ARG DEBIAN_IMAGE=(\S+)", f.read(), re.M)
        default_base = m.group(1) if m else None
    if not default_base or not re.match(r"debian:(12|bookworm)\b", default_base):
        fail(f"base image {default_base} is not Debian 12")
    runtime = all_stages[-1]
    instr = runtime["all"]
    entry = [a for k, a in instr if k == "ENTRYPOINT"]
    if len(entry) != 1 or not entry[0].startswith("["):
        fail("ENTRYPOINT must be one exec-form (JSON array) instruction")
    user = [a for k, a in instr if k == "USER"]
    uid = user[-1].split(":")[0] if user else ""
    if not uid.isdigit() or int(uid) == 0:
        fail(f"USER {user} is not a numeric non-root user")
    exposed = sorted(int(p.split("/")[0]) for k, a in instr if k == "EXPOSE" for p in a.split())
    with open(STATEFULSET) as f:
        sts = yaml.safe_load(f)
    pod = sts["spec"]["template"]["spec"]
    ports = sorted(p["containerPort"] for c in pod["containers"] for p in c["ports"])
    if exposed != ports:
        fail(f"EXPOSE {exposed} differs from the StatefulSet's container ports {ports}")
    if uid.isdigit() and pod["securityContext"].get("runAsUser") != int(uid):
        fail(f"USER {uid} differs from the StatefulSet's runAsUser")
    ok(f"{len(all_stages)} stages from {default_base}; exec-form ENTRYPOINT; USER {user[-1]}; "
       f"EXPOSE {exposed} = the StatefulSet's ports")
    del base


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    with open(DOCKERFILE) as f:
        text = f.read()
    all_stages = stages(instructions(text))
    project_rules(all_stages)
    lint(text)
    shellcheck(all_stages)
    resolvable(all_stages)
    runtime_packages(all_stages, os.path.abspath(sys.argv[1]))
    print(f"{len(failures)} failed" if failures else "all Dockerfile checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
