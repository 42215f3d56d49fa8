# Shared by the launch scripts (sourced, not run): system packages, build, mpirun flags.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SYSTEM_PACKAGES=(libopenmpi-dev openmpi-bin libopenblas-dev zlib1g-dev pkgconf python3)

# Installs the system packages that are missing when running as root; otherwise prints the exact
# command and stops.
ensure_system_packages() {
  local missing=()
  for p in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  command -v swift >/dev/null || { echo "launch: swift is not on PATH; install a Swift 6 toolchain (swift.org) first" >&2; exit 1; }
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
}

# Builds the release binaries (autorate and the collectives check); stops when the build fails,
# so that an older binary is never run in its place.
build_release() {
  local rc
  (cd "$ROOT" && swift build -c release 2>&1 | grep -Ev '^\[[0-9]+/[0-9]+\]'; exit "${PIPESTATUS[0]}") && rc=0 || rc=$?
  if [ "$rc" -ne 0 ]; then echo "launch: the release build failed (exit $rc); see the errors above" >&2; exit "$rc"; fi
}

# OpenBLAS 0.3.21 does not recognise some current Xeons (e.g. those reporting the model name
# "Intel(R) Xeon(R) Processor") and falls back to its Prescott (SSE3) kernels, 4x slower than its
# AVX-512 ones on the same CPU. When the user has not chosen, pick the kernel the CPU flags allow.
select_blas_kernel() {
  if [ -z "${OPENBLAS_CORETYPE:-}" ] && [ -r /proc/cpuinfo ] && grep -q GenuineIntel /proc/cpuinfo; then
    if grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
    elif grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell
    fi
  fi
  if [ -n "${OPENBLAS_CORETYPE:-}" ]; then echo "launch: OpenBLAS kernels: OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE" >&2; fi
}

# mpirun -x flags that forward the BLAS settings to every rank.
blas_env_flags() {
  echo "-x OPENBLAS_NUM_THREADS=${THREADS:-1}"
  if [ -n "${OPENBLAS_CORETYPE:-}" ]; then echo "-x OPENBLAS_CORETYPE"; fi
}

# Flags mpirun needs here: as root, Open MPI refuses to start unless told it may.
mpirun_flags() {
  if [ "$(id -u)" -eq 0 ]; then echo "--allow-run-as-root"; fi
}
