"""``smctl build-push`` (``make build-push``): push a locally built image to ECR or any registry.

ECR (default): create the repository if it is missing (scan on push on; tags immutable unless
``--latest`` is asked for, since ``latest`` must move), log Docker in with a token from
``ecr:GetAuthorizationToken``, tag with the git SHA, push, print the image URI.
``--registry HOST:PORT`` (``REGISTRY=`` in make) pushes to that registry instead, no AWS involved.

The tag is the commit (``git rev-parse --short=12 HEAD``); a working tree with uncommitted
changes gets ``SHA-dirty-YYMMDD-HHMMSS`` so an immutable tag never names two different images.

    make build-push                                   # build, then push to ECR
    make build-push IMAGE=imgclf:dev REGISTRY=127.0.0.1:5000
    smctl build-push --image imgclf:dev --latest
"""

from __future__ import annotations

import base64
import os
import re
import subprocess

from smctl.aws import Api
from smctl.config import Settings, save_state
from smctl.errors import ConfigError, SmctlError
from smctl.util import timestamp

_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def add_parser(sub, parents) -> None:
    p = sub.add_parser("build-push", parents=parents,
                       help="push the built image to ECR (or --registry) tagged with the git SHA")
    p.add_argument("--image", required=True,
                   help="local image to push, e.g. the tag 'make image-name' prints")
    p.add_argument("--registry", default=os.environ.get("REGISTRY") or None,
                   help="push to HOST[:PORT] instead of ECR (env REGISTRY)")
    p.add_argument("--repository", help="repository name (default: imgclf-sagemaker)")
    p.add_argument("--tag", help="tag to push (default: git SHA, -dirty-TIME if uncommitted changes)")
    p.add_argument("--latest", action="store_true", help="also push the 'latest' tag")
    p.set_defaults(func=run_build_push)


def docker_bin() -> str:
    return os.environ.get("DOCKER", "docker")


def run(cmd: list[str], *, input: bytes | None = None, capture: bool = False,
        hint: str = "is the Docker engine running ('docker info')?") -> str:
    try:
        if capture or input is not None:
            proc = subprocess.run(cmd, input=input, capture_output=True, check=False)
        else:  # progress to stderr: stdout carries only the pushed URI
            proc = subprocess.run(cmd, stdout=2, stderr=2, check=False)
    except FileNotFoundError:
        raise SmctlError(f"{cmd[0]} not found", "install Docker (and start the engine)") from None
    if proc.returncode != 0:
        err = (proc.stderr or b"").decode("utf-8", "replace").strip().splitlines()
        raise SmctlError(f"'{' '.join(cmd[:3])} ...' failed ({proc.returncode})"
                         + (f": {err[-1]}" if err else ""), hint)
    return (proc.stdout or b"").decode("utf-8", "replace").strip()


def git_tag(cwd: str | None = None) -> str:
    """The immutable tag for this checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "build-" + timestamp()
    return f"{sha}-dirty-{timestamp()}" if dirty else sha


def ensure_ecr_repository(api: Api, name: str, mutable: bool) -> str:
    """The repository URI; creates the repository (scan on push) if it does not exist."""
    if api.dry_run:
        api.call("ecr", "describe_repositories", repositoryNames=[name])
        api.call("ecr", "create_repository", repositoryName=name,
                 imageScanningConfiguration={"scanOnPush": True},
                 imageTagMutability="MUTABLE" if mutable else "IMMUTABLE")
        return f"<account-id>.dkr.ecr.{api.region}.{api.partition_domain}/{name}"
    ecr = api.client("ecr")
    try:
        repo = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
        if not repo.get("imageScanningConfiguration", {}).get("scanOnPush"):
            api.log(f"note: repository {name} exists without scan on push")
        if mutable and repo.get("imageTagMutability") == "IMMUTABLE":
            raise SmctlError(f"repository {name} has immutable tags, so 'latest' cannot move",
                             "push without --latest / PUSH_LATEST (the SHA tag is the reference)")
        if not mutable and repo.get("imageTagMutability") == "MUTABLE":
            api.log(f"note: repository {name} has mutable tags")
    except ecr.exceptions.RepositoryNotFoundException:
        repo = ecr.create_repository(repositoryName=name,
                                     imageScanningConfiguration={"scanOnPush": True},
                                     imageTagMutability="MUTABLE" if mutable else "IMMUTABLE"
                                     )["repository"]
        api.log(f"created ECR repository {repo['repositoryUri']} (scan on push)")
    return repo["repositoryUri"]


def ecr_tag_exists(api: Api, repository: str, tag: str) -> bool:
    """True if ``repository:tag`` is already in ECR (immutable tags cannot be pushed twice)."""
    if api.dry_run:
        api.call("ecr", "describe_images", repositoryName=repository, imageIds=[{"imageTag": tag}])
        return False
    ecr = api.client("ecr")
    try:
        return bool(ecr.describe_images(repositoryName=repository,
                                        imageIds=[{"imageTag": tag}])["imageDetails"])
    except ecr.exceptions.ImageNotFoundException:
        return False


def ecr_login(api: Api, registry_host: str) -> None:
    if api.dry_run:
        api.call("ecr", "get_authorization_token")
        api.record("docker", argv=[docker_bin(), "login", "--username", "AWS", "--password-stdin",
                                   registry_host])
        return
    data = api.client("ecr").get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    endpoint = data.get("proxyEndpoint") or f"https://{registry_host}"
    run([docker_bin(), "login", "--username", user, "--password-stdin", endpoint],
        input=password.encode())


def run_build_push(args, settings: Settings, api: Api) -> int:
    tag = args.tag or git_tag()
    if not _TAG_RE.match(tag):
        raise ConfigError(f"invalid image tag {tag!r}", "letters, digits, _ . - ; at most 128")
    repository = args.repository or settings.repository
    if not api.dry_run:
        run([docker_bin(), "image", "inspect", args.image], capture=True,
            hint="build it first ('make build') or pass an existing IMAGE / --image; "
                 "is the Docker engine running?")
    if args.registry:
        target = f"{args.registry.rstrip('/')}/{repository}"
    else:
        target = ensure_ecr_repository(api, repository, mutable=args.latest)
        ecr_login(api, target.split("/", 1)[0])
    tags = [tag] + (["latest"] if args.latest and tag != "latest" else [])
    if not args.registry and ecr_tag_exists(api, repository, tag):
        # Same commit, same tag: already there (and immutable). Only 'latest' may move.
        api.log(f"{target}:{tag} is already in ECR: not pushing it again")
        tags.remove(tag)
    for t in tags:
        for argv in ([docker_bin(), "tag", args.image, f"{target}:{t}"],
                     [docker_bin(), "push", f"{target}:{t}"]):
            if api.dry_run:
                api.record("docker", argv=argv)
            else:
                api.log("+ " + " ".join(argv))
                run(argv)
    uri = f"{target}:{tag}"
    if api.dry_run:
        return 0
    save_state(image_uri=uri)
    print(uri)
    return 0
