#!/usr/bin/env bash
# An emulated aarch64 Linux "board" for tuning over TVM RPC: an arm64 Debian CPython 3.11 userland run by qemu-user,
# with the aarch64 wheels of TVM's runtime, serving `python -m tvm.exec.rpc_server`.
#
#   scripts/aarch64_rpc_board.sh setup                                  # build the board into the cache (idempotent)
#   scripts/aarch64_rpc_board.sh serve --tracker 127.0.0.1:9190 --key aarch64-qemu [rpc_server options...]
#   scripts/aarch64_rpc_board.sh python [args...]                       # the board's python3.11, under qemu
#   scripts/aarch64_rpc_board.sh run SCRIPT.py [args...]                # the same, with `import tvm_bnn` giving
#                                                                       # tvm_bnn.load (tvm_bnn/deploy/runtime_loader.py)
#   scripts/aarch64_rpc_board.sh check                                  # exit 0 iff the board is set up
#   scripts/aarch64_rpc_board.sh dir                                    # print the board's directory
#
# The board lives in $TVM_BNN_AARCH64_BOARD (default $HOME/.cache/tvm_bnn/aarch64-board):
#   sysroot/  arm64 .debs of Debian 12's python3.11 and its libraries, unpacked with dpkg -x (nothing is installed
#             into the host system; apt runs with its own state under apt/, so no `dpkg --add-architecture` either)
#   site/     aarch64 wheels (apache-tvm, apache-tvm-ffi and the RPC server's imports), pip install --target
# Needs: qemu-aarch64 (Debian qemu-user), apt-get + dpkg-deb (Debian), a host Python with pip (the repo's .venv, or
# $PYTHON), and reach to the Debian and PyPI registries.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BOARD="${TVM_BNN_AARCH64_BOARD:-$HOME/.cache/tvm_bnn/aarch64-board}"
SYSROOT="$BOARD/sysroot"
SITE="$BOARD/site"

# Pins. Debian: the python3.11 packages are pinned to bookworm's version; the libraries they load are bookworm's
# current ones (ABI-stable within the release). Wheels: the versions of the repo's host environment.
PY_DEB_VERSION="${TVM_BNN_BOARD_PY_DEB_VERSION:-3.11.2-6+deb12u9}"
PY_DEBS="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib"
LIB_DEBS="libc6 libgcc-s1 libstdc++6 libexpat1 zlib1g libssl3 libffi8 libbz2-1.0 liblzma5 libuuid1 libcrypt1"
WHEELS="apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy==2.4.6 ml_dtypes==0.6.0 psutil==7.2.2
cloudpickle==3.1.3 tornado==6.6.1 typing_extensions==4.16.0"
STAMP_TEXT="v3 $PY_DEB_VERSION | $PY_DEBS | $LIB_DEBS | $(echo $WHEELS)"
STAMP="$BOARD/.setup-done"  # bump STAMP_TEXT's v-number when setup() changes: boards built before are redone

die() { echo "aarch64_rpc_board: error: $*" >&2; exit 1; }
log() { echo "aarch64_rpc_board: $*" >&2; }

need_tool() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found; $2"
}

host_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
  elif [ -x "$ROOT/.venv/bin/python" ]; then echo "$ROOT/.venv/bin/python"
  else echo python3; fi
}

is_set_up() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ] && [ -x "$SYSROOT/usr/bin/python3.11" ] \
    && [ -d "$SITE/tvm" ]
}

board_python() {  # run the board's python under qemu-user
  need_tool qemu-aarch64 "install Debian's qemu-user (apt-get install qemu-user)"
  is_set_up || die "the board is not set up in $BOARD; run: scripts/aarch64_rpc_board.sh setup"
  # runtime only: the board never compiles (the host cross-compiles every candidate), and skipping libtvm_compiler
  # keeps startup short under emulation. One thread: the emulated board shares the host's cores with the tuner.
  # the host's PYTHONPATH is not the board's: only what board_run adds (BOARD_EXTRA_PATH) comes before the board's
  PYTHONPATH="${BOARD_EXTRA_PATH:+$BOARD_EXTRA_PATH:}$BOARD/boot:$SITE" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 TVM_USE_RUNTIME_LIB=1 \
    TVM_NUM_THREADS="${TVM_NUM_THREADS:-1}" TVM_BNN_BOARD_PYTHON="$BOARD/bin/python3.11" \
    exec "$BOARD/bin/python3.11" "$@"
}

board_run() {  # the board's python with tvm_bnn's runtime-only load path importable as the package tvm_bnn
  [ $# -gt 0 ] || die "usage: $0 run SCRIPT.py [args...]"
  is_set_up || die "the board is not set up in $BOARD; run: scripts/aarch64_rpc_board.sh setup"
  # the loader of this tree, in a directory named by its content (several trees may share one board)
  local src="$ROOT/tvm_bnn/deploy/runtime_loader.py" dir tmp
  dir="$BOARD/loader/$(sha256sum "$src" | cut -c1-16)"
  if [ ! -f "$dir/tvm_bnn/__init__.py" ]; then
    mkdir -p "$dir/tvm_bnn"
    tmp="$(mktemp "$dir/tvm_bnn/.init.XXXXXX")"
    cp "$src" "$tmp"
    mv -f "$tmp" "$dir/tvm_bnn/__init__.py"
  fi
  BOARD_EXTRA_PATH="$dir" board_python "$@"
}

setup() {
  if is_set_up; then
    log "already set up in $BOARD"
    return 0
  fi
  need_tool qemu-aarch64 "install Debian's qemu-user (apt-get install qemu-user)"
  need_tool apt-get "the board's userland comes from Debian's arm64 packages (a Debian host is needed)"
  need_tool dpkg-deb "the board's userland comes from Debian's arm64 packages (a Debian host is needed)"
  local py; py="$(host_python)"
  "$py" -m pip --version >/dev/null 2>&1 || die "no pip in host python '$py' (run scripts/setup.sh, or set PYTHON)"
  local t0=$SECONDS
  rm -rf "$SYSROOT" "$SITE" "$BOARD/debs" "$BOARD/bin" "$BOARD/boot" "$STAMP"
  mkdir -p "$BOARD/apt/lists/partial" "$BOARD/apt/cache/archives/partial" "$BOARD/debs" "$SYSROOT"
  : > "$BOARD/apt/status"
  # apt with a private state: arm64 package lists without touching the host's dpkg architectures or lists
  local apt_opts=(-o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o "Dir::State::Lists=$BOARD/apt/lists"
    -o "Dir::State::status=$BOARD/apt/status" -o "Dir::Cache=$BOARD/apt/cache" -o Debug::NoLocking=1 -q)
  log "fetching the arm64 package lists"
  apt-get "${apt_opts[@]}" update >"$BOARD/apt/update.log" 2>&1 \
    || die "apt-get update (arm64) failed; see $BOARD/apt/update.log"
  local specs=() p
  for p in $PY_DEBS; do specs+=("$p=$PY_DEB_VERSION"); done
  for p in $LIB_DEBS; do specs+=("$p"); done
  for p in $PY_DEBS $LIB_DEBS; do
    apt-cache "${apt_opts[@]}" show "$p" >/dev/null 2>&1 \
      || die "arm64 Debian package '$p' is not in the configured mirror (apt-cache show $p:arm64 fails)"
  done
  for p in $PY_DEBS; do
    apt-cache "${apt_opts[@]}" madison "$p" | awk -F'|' '{gsub(/ /, "", $2); print $2}' | grep -qxF "$PY_DEB_VERSION" \
      || die "arm64 Debian package $p=$PY_DEB_VERSION (pinned) is not in the configured mirror; it has:" \
        "$(apt-cache "${apt_opts[@]}" madison "$p" | awk -F'|' '{gsub(/ /, "", $2); print $2}' | xargs)" \
        "(override the pin with TVM_BNN_BOARD_PY_DEB_VERSION)"
  done
  log "downloading ${#specs[@]} arm64 .debs"
  (cd "$BOARD/debs" && apt-get "${apt_opts[@]}" download "${specs[@]}" >"$BOARD/apt/download.log" 2>&1) \
    || die "apt-get download of the arm64 .debs failed: $(grep -E '^(E|W):' "$BOARD/apt/download.log" | head -5)"
  local deb
  for deb in "$BOARD"/debs/*.deb; do dpkg-deb -x "$deb" "$SYSROOT"; done
  (cd "$BOARD/debs" && ls *.deb) > "$BOARD/debs.txt"
  [ -x "$SYSROOT/usr/bin/python3.11" ] || die "python3.11 missing from the unpacked sysroot $SYSROOT"
  rm -rf "$BOARD/debs"

  log "downloading the aarch64 wheels"
  # shellcheck disable=SC2086
  "$py" -m pip install --disable-pip-version-check -q --no-deps --only-binary=:all: --target "$SITE" \
    --implementation cp --python-version 3.11 --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 $WHEELS >"$BOARD/pip.log" 2>&1 \
    || die "pip could not fetch the aarch64 wheels ($(echo $WHEELS)): $(grep -E 'ERROR' "$BOARD/pip.log" | head -5)"
  # the board only runs compiled modules: drop the compiler (~240 MB) and the CUDA runtime
  rm -f "$SITE"/tvm/lib/libtvm_compiler.so "$SITE"/tvm/lib/libtvm_runtime_cuda.so
  rm -rf "$SITE/bin"

  # The RPC server starts its workers as [sys.executable, "-m", "tvm.exec.popen_worker"]. Without a binfmt_misc entry
  # for aarch64 the host kernel cannot exec the board's python3.11, so sys.executable is pointed (sitecustomize) at a
  # host shell wrapper that runs it under qemu; qemu-user passes the guest's execve of that script to the host.
  mkdir -p "$BOARD/bin" "$BOARD/boot"
  printf '#!/bin/sh\nexec "%s" -L "%s" "%s" "$@"\n' "$(command -v qemu-aarch64)" "$SYSROOT" \
    "$SYSROOT/usr/bin/python3.11" > "$BOARD/bin/python3.11"
  chmod +x "$BOARD/bin/python3.11"
  printf '%s\n' "import os" "import sys" "" "if os.environ.get('TVM_BNN_BOARD_PYTHON'):" \
    "    sys.executable = os.environ['TVM_BNN_BOARD_PYTHON']" > "$BOARD/boot/sitecustomize.py"
  # Runtime-only TVM (TVM_USE_RUNTIME_LIB=1) skips libtvm_runtime_extra, which holds
  # tvm.contrib.random.random_fill_for_measure, needed by MetaSchedule's RPCRunner. A "tvm.backends" entry point
  # (TVM's hook for out-of-tree backends, run at `import tvm` in runtime-only mode too) loads it.
  mkdir -p "$BOARD/boot/tvm_bnn_board-1.0.dist-info"
  printf '%s\n' "Metadata-Version: 2.1" "Name: tvm_bnn_board" "Version: 1.0" \
    > "$BOARD/boot/tvm_bnn_board-1.0.dist-info/METADATA"
  printf '%s\n' "[tvm.backends]" "runtime_extra = tvm_bnn_board:load_runtime_extra" \
    > "$BOARD/boot/tvm_bnn_board-1.0.dist-info/entry_points.txt"
  printf '%s\n' '"""The emulated board: load libtvm_runtime_extra next to libtvm_runtime (see aarch64_rpc_board.sh)."""' \
    "import os" "import pathlib" "" "" "def load_runtime_extra():" "    from tvm.base import _LOADED_LIBS" \
    "    from tvm_ffi.libinfo import load_lib_ctypes" "" "    if 'tvm_runtime_extra' not in _LOADED_LIBS:" \
    "        runtime_dir = pathlib.Path(os.path.realpath(_LOADED_LIBS['tvm_runtime']._name)).parent" \
    "        _LOADED_LIBS['tvm_runtime_extra'] = load_lib_ctypes(package='tvm', target_name='tvm_runtime_extra'," \
    "                                                            extra_lib_paths=[runtime_dir], mode='RTLD_LOCAL')" \
    > "$BOARD/boot/tvm_bnn_board.py"

  log "byte-compiling (Debian's .debs ship no .pyc; without them the server starts 2.5x slower under qemu)"
  qemu-aarch64 -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" -m compileall -q -j2 "$SYSROOT/usr/lib/python3.11" "$SITE" \
    >"$BOARD/compileall.log" 2>&1 || true  # a few test files of the stdlib do not compile; harmless

  log "checking the board's python"
  local out
  out="$(PYTHONPATH="$BOARD/boot:$SITE" PYTHONNOUSERSITE=1 TVM_USE_RUNTIME_LIB=1 qemu-aarch64 -L "$SYSROOT" \
    "$SYSROOT/usr/bin/python3.11" -c 'import platform, tvm, tvm.rpc, tvm.exec.rpc_server, numpy
assert tvm.get_global_func("tvm.contrib.random.random_fill_for_measure", allow_missing=True) is not None, "no random_fill"
print(platform.machine(), tvm.__version__, numpy.__version__)' 2>&1)" \
    || die "the board's python cannot import tvm's RPC server: $out"
  log "board python: $out"
  echo "$STAMP_TEXT" > "$STAMP"
  log "set up in $BOARD in $((SECONDS - t0)) s"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  check) is_set_up || { echo "no board set up in $BOARD" >&2; exit 1; } ;;
  dir) echo "$BOARD" ;;
  python) board_python "$@" ;;
  run) board_run "$@" ;;
  serve)
    tracker="" key=""
    args=()
    while [ $# -gt 0 ]; do
      case "$1" in
        --tracker) tracker="${2:-}"; shift 2 ;;
        --tracker=*) tracker="${1#*=}"; shift ;;
        --key) key="${2:-}"; shift 2 ;;
        --key=*) key="${1#*=}"; shift ;;
        *) args+=("$1"); shift ;;
      esac
    done
    [ -n "$tracker" ] && [ -n "$key" ] || die "usage: $0 serve --tracker HOST:PORT --key KEY [rpc_server options]"
    board_python -m tvm.exec.rpc_server --host 127.0.0.1 --tracker "$tracker" --key "$key" ${args[@]+"${args[@]}"}
    ;;
  *)
    echo "usage: $0 {setup|serve --tracker HOST:PORT --key KEY|python ARGS|run SCRIPT ARGS|check|dir}" >&2
    echo "board dir: $BOARD (TVM_BNN_AARCH64_BOARD)" >&2
    exit 2 ;;
esac
