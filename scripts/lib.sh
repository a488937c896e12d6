# For demo.sh: loopback ports and a real etcd process.
# Needs $bin (the repo's bin/).

# free_port prints a loopback port nothing listens on.
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 20000))
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
	done
}

# start_etcd DATA_DIR LOG [ETCD ARGS...]: starts a one-member etcd on loopback, waits
# until it is healthy, and sets etcd_pid and etcd_endpoint.
start_etcd() {
	local dir="$1" log="$2" cport pport
	shift 2
	cport=$(free_port)
	pport=$(free_port)
	etcd_endpoint="http://127.0.0.1:$cport"
	"$bin/etcd" --name "$(basename "$dir")" --data-dir "$dir" --log-level error \
		--listen-client-urls "$etcd_endpoint" --advertise-client-urls "$etcd_endpoint" \
		--listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
		--initial-cluster "$(basename "$dir")=http://127.0.0.1:$pport" "$@" >"$log" 2>&1 &
	etcd_pid=$!
	for _ in $(seq 150); do
		"$bin/etcdctl" --endpoints "$etcd_endpoint" endpoint health >/dev/null 2>&1 && return 0
		kill -0 "$etcd_pid" 2>/dev/null || break
		sleep 0.2
	done
	echo "etcd did not start; its log:" >&2
	tail -n 20 "$log" >&2
	return 1
}
