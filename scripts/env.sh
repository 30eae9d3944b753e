# Environment shared by the scripts: the project's venv, headless Qt, and PROJ from the wheels.
# Sourced, not run.
unset PROJ_DATA PROJ_LIB
export QT_QPA_PLATFORM=offscreen
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/kdmsi-runtime-$(id -u)}"
mkdir -p -m 0700 "$XDG_RUNTIME_DIR"
export PATH="$PWD/.venv/bin:$PATH"
