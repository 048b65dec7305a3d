#!/usr/bin/env bash
# Build every provider image and the orchestrator image, then publish them under a release
# version, with OCI labels that say where they come from (.github/workflows/publish.yml).
#
#   scripts/dev/publish-images.sh STAGING_REGISTRY DESTINATION VERSION SOURCE_URL REVISION
#
#   STAGING_REGISTRY  a registry `dstream providers push` can push to (e.g. a registry:2 service
#                     on 127.0.0.1:5000): the CLI builds and pushes there, tagged with each
#                     provider's own version
#   DESTINATION       where the release goes, e.g. ghcr.io/acme (each image keeps its path,
#                     dstream/<name>), already logged in to
#   VERSION           the release version (the git tag without its "v"); every image is tagged
#                     with it, so one release never overwrites another's images
#   SOURCE_URL        org.opencontainers.image.source (the repository's URL)
#   REVISION          org.opencontainers.image.revision (the commit)
#
# Each built image gets a one-line `FROM` build that adds the labels
# org.opencontainers.image.source, .version and .revision (no new layer), then is pushed.
# Environment: PUBLISH_PROVIDERS (default: every catalogued provider), PUBLISH_ORCHESTRATOR
# (default 1: the dstream image too), DSTREAM_BASE_IMAGE as for `dstream providers build`.
set -euo pipefail
# shellcheck source=scripts/dev/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(( $# == 5 )) || die "usage: $0 STAGING_REGISTRY DESTINATION VERSION SOURCE_URL REVISION"
stage="$1" dest="${2%/}" version="$3" source_url="$4" revision="$5"
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+([.+-][0-9A-Za-z.-]+)?$ ]] || die "version $version is not a release version (like 1.2.3)"
[[ "$dest" == "${dest,,}" ]] || die "destination $dest must be lowercase (OCI repository names are)"

dstream="${DSTREAM_BIN:-dstream}"
args=(providers push --build --registry "$stage")
if [[ -n "${PUBLISH_PROVIDERS:-}" ]]; then
    read -r -a names <<<"$PUBLISH_PROVIDERS"
    args+=("${names[@]}")
else
    args+=(--all)
fi
[[ "${PUBLISH_ORCHESTRATOR:-1}" == 1 ]] && args+=(--orchestrator)

log "building and pushing to the staging registry $stage: ${args[*]}"
mapfile -t built < <("$dstream" "${args[@]}")
(( ${#built[@]} > 0 )) || die "dstream providers push printed no image"

published=()
for ref in "${built[@]}"; do
    image="${ref%@*}"                # 127.0.0.1:5000/dstream/asb-output-provider:0.1.0
    path="${image#"$stage"/}"        # dstream/asb-output-provider:0.1.0
    path="${path%:*}"                # dstream/asb-output-provider
    [[ "$path" != "$image" && -n "$path" ]] || die "unexpected image reference $ref (not under $stage)"
    target="$dest/$path:$version"
    log "labelling $image as $target"
    printf 'FROM %s\n' "$image" | docker build -q \
        --label "org.opencontainers.image.source=$source_url" \
        --label "org.opencontainers.image.version=$version" \
        --label "org.opencontainers.image.revision=$revision" \
        -t "$target" - >/dev/null
    docker push -q "$target" >/dev/null
    published+=("$target")
done
printf '%s\n' "${published[@]}"
log "published ${#published[@]} image(s) as version $version"
