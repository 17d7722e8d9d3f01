# Build stacks: the images builds lay their layers on and run their steps
# in (tools/stacks/stacks.json), made offline from Debian's packages with
# mmdebstrap, or from busybox-static, by the machinery of runtimes.sh (sourced,
# not run; it sources image.sh and runtimes.sh).
# shellcheck shell=bash
#
#   stack_names                  the stacks, one a line
#   stack_get NAME FIELD         a field of the stack
#   stack_cached NAME            the path of NAME's OCI layout in the cache, built
#                                first when missing
#   stack_push NAME REGISTRY     pushes it to REGISTRY/image:tag; prints REF@DIGEST
#
# The cache is $LOOM_STACK_CACHE (default /var/cache/loom/stacks), kept as
# runtimes.sh keeps its own: a build is reused while its inputs are the same.

stacks_lib=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tools/lib/image.sh
. "$stacks_lib/image.sh"
# shellcheck source=tools/lib/runtimes.sh
. "$stacks_lib/runtimes.sh"

_stack() (
	# shellcheck disable=SC2034 # runtimes.sh reads them
	runtime_json=$runtime_repo/tools/stacks/stacks.json runtime_catalog=stacks runtime_what=stack
	LOOM_RUNTIME_CACHE=${LOOM_STACK_CACHE:-/var/cache/loom/stacks} "$@"
)

stack_names() { _stack runtime_names; }
stack_get() { _stack runtime_get "$@"; }
stack_cached() { _stack runtime_cached "$1"; }
stack_push() { _stack runtime_push "$1" "$(_stack runtime_ref "$1" "$2")"; }
