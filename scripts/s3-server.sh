# A local S3 server (moto, from PyPI) for scripts/test and scripts/bench; sourced, not run.
#
#   . scripts/s3-server.sh
#   start_s3_server PYTHON LOG    # moto_server of PYTHON's venv on 127.0.0.1:<free port>, in the
#                                 # background; sets s3_pid and exports CHATETL_TEST_S3=http://127.0.0.1:PORT
#   stop_s3_server                # stops it (call it from the caller's EXIT trap)
#
# moto accepts any credentials and keeps everything in memory; each user creates its own bucket
# (`PUT http://127.0.0.1:PORT/BUCKET`).

s3_pid=""

start_s3_server() {
  local python="$1" log="$2" port waited=0
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  "$(dirname "$python")/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
  s3_pid=$!
  # Importing moto takes a few seconds, more on a loaded machine: up to 120 s.
  # The venv's own Python asks (curl need not be installed).
  until "$python" -c "import urllib.request, sys
try: urllib.request.urlopen('http://127.0.0.1:$port/', timeout=1)
except urllib.error.HTTPError: pass
except Exception: sys.exit(1)" 2>/dev/null; do
    if ! kill -0 "$s3_pid" 2>/dev/null; then
      echo "s3-server: moto_server exited before it answered on 127.0.0.1:$port; its output ($log):" >&2
      tail -n 20 "$log" >&2
      s3_pid=""
      return 1
    fi
    if [ "$waited" -ge 1200 ]; then
      echo "s3-server: moto_server did not answer on 127.0.0.1:$port within 120 s (output in $log)" >&2
      stop_s3_server
      return 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  export CHATETL_TEST_S3="http://127.0.0.1:$port"
}

stop_s3_server() {
  if [ -n "$s3_pid" ]; then
    kill "$s3_pid" 2>/dev/null || true
    wait "$s3_pid" 2>/dev/null || true
    s3_pid=""
  fi
}
