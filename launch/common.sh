# Shared by the launch scripts (sourced, not run): system packages, build, mpirun flags.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SYSTEM_PACKAGES=(libopenmpi-dev openmpi-bin libopenblas-dev zlib1g-dev pkg-config)

# Installs the system packages that are missing when running as root; otherwise prints the exact
# command and stops.
ensure_system_packages() {
  local missing=()
  for p in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ]; then
    echo "launch: installing missing system packages: ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 || {
      echo "launch: apt-get install ${missing[*]} failed" >&2; exit 1; }
  else
    echo "launch: missing system packages: ${missing[*]}" >&2
    echo "launch: install them with:  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  command -v swift >/dev/null || { echo "launch: swift is not on PATH (Swift 6 toolchain needed)" >&2; exit 1; }
}

# Builds the release binaries (autorate and the collectives check).
build_release() {
  (cd "$ROOT" && swift build -c release 2>&1 | grep -Ev '^\[[0-9]+/[0-9]+\]' ) || true
  [ -x "$ROOT/.build/release/autorate" ] || { echo "launch: the release build failed (run: swift build -c release)" >&2; exit 1; }
}

# Flags mpirun needs here: as root, Open MPI refuses to start unless told it may.
mpirun_flags() {
  if [ "$(id -u)" -eq 0 ]; then echo "--allow-run-as-root"; fi
}
