# Shared by the scripts: a build directory outside the clone, so that CI runs
# and later checkouts on this machine reuse compiled dependencies.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cordon/target}"
