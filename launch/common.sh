# Shared by the launch scripts (sourced, not run): system packages, build, mpirun flags.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SYSTEM_PACKAGES=(libopenmpi-dev openmpi-bin libopenblas-dev zlib1g-dev python3-numpy libpng-dev libturbojpeg0-dev pkgconf python3)

# The packages among the arguments that are not installed, one per line.
missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

# Installs the system packages that are missing when running as root; otherwise prints the exact
# command and stops.
ensure_system_packages() {
  local missing=()
  mapfile -t missing < <(missing_packages "${SYSTEM_PACKAGES[@]}")
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

# Real IDX files for the tests of the data readers (Fashion-MNIST as Debian packs it, in MNIST's
# format and file names): installed as root; otherwise the command is printed and those tests skip.
TEST_DATA_PACKAGES=(dataset-fashion-mnist)
ensure_test_data() {
  local missing=()
  mapfile -t missing < <(missing_packages "${TEST_DATA_PACKAGES[@]}")
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ]; then
    echo "launch: installing the tests' data: ${missing[*]}" >&2
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2; then return 0; fi
  fi
  echo "launch: the tests on real IDX files will skip; install their data with:  sudo apt-get install -y ${missing[*]}" >&2
}

# AUTORATE_TARGET_CPU (opt-in; unset by default): build for one CPU, `native` (the CPU this
# runs on) or an LLVM CPU name such as skylake-avx512 or znver4, so that Swift's loops use its
# widest vectors (AVX-512 instead of the default target's 4-wide SSE). The binary then runs only on
# CPUs with those instructions: on a cluster, build on (or for) the compute nodes. It goes to a
# build directory of its own, .build-cpu-NAME; $AUTORATE is the binary the scripts run.
BUILD_FLAGS=()
BUILD_DIR="$ROOT/.build"
if [ -n "${AUTORATE_TARGET_CPU:-}" ]; then
  if ! [[ $AUTORATE_TARGET_CPU =~ ^[a-z0-9][a-z0-9_.-]*$ ]]; then
    echo "launch: AUTORATE_TARGET_CPU='$AUTORATE_TARGET_CPU' is not a CPU name; use native or an LLVM CPU name such as skylake-avx512, icelake-server, znver4 (unset it for the portable build)" >&2
    exit 2
  fi
  BUILD_DIR="$ROOT/.build-cpu-$AUTORATE_TARGET_CPU"
  # AUTORATE_ONE_CPU: the binary says it was built for one CPU (startup line, bench JSON "build")
  BUILD_FLAGS=(--scratch-path "$BUILD_DIR" -Xswiftc -target-cpu -Xswiftc "$AUTORATE_TARGET_CPU" -Xcc "-march=$AUTORATE_TARGET_CPU" -Xswiftc -DAUTORATE_ONE_CPU)
fi
AUTORATE="$BUILD_DIR/release/autorate"

# Builds the release binaries (autorate and the collectives check); stops when the build fails,
# so that an older binary is never run in its place.
build_release() {
  local rc
  if [ -n "${AUTORATE_TARGET_CPU:-}" ]; then
    echo "launch: building for CPU $AUTORATE_TARGET_CPU only (AUTORATE_TARGET_CPU) into ${BUILD_DIR#"$ROOT"/}" >&2
  fi
  (cd "$ROOT" && swift build -c release ${BUILD_FLAGS[@]+"${BUILD_FLAGS[@]}"} 2>&1 | grep -Ev '^\[[0-9]+/[0-9]+\]'; exit "${PIPESTATUS[0]}") && rc=0 || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "launch: the release build failed (exit $rc)${AUTORATE_TARGET_CPU:+ for AUTORATE_TARGET_CPU=$AUTORATE_TARGET_CPU}; see the errors above" >&2
    exit "$rc"
  fi
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
