# Shared by demo.sh and bench.sh: loopback ports and a real etcd process.
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

# start_versitygw DIR LOG BUCKET: starts a local S3 server (versitygw) on loopback with
# fresh credentials, creates BUCKET, and sets versitygw_pid, s3url and curlcfg (a curl
# config that signs requests). The credentials go through the environment (exported for
# etcdguard as AWS_*), never argv, so they stay out of process listings.
start_versitygw() {
	local dir="$1" log="$2" bucket="$3" port ak sk
	port=$(free_port)
	ak="bench$RANDOM"
	sk="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
	mkdir -p "$dir"
	ROOT_ACCESS_KEY="$ak" ROOT_SECRET_KEY="$sk" "$bin/versitygw" --port "127.0.0.1:$port" posix "$dir" >"$log" 2>&1 &
	versitygw_pid=$!
	export AWS_ACCESS_KEY_ID="$ak" AWS_SECRET_ACCESS_KEY="$sk" AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
	s3url="http://127.0.0.1:$port"
	curlcfg="$(dirname "$log")/curl.cfg"
	printf 'user = "%s:%s"\naws-sigv4 = "aws:amz:us-east-1:s3"\nheader = "x-amz-content-sha256: UNSIGNED-PAYLOAD"\nsilent\nshow-error\nfail\n' "$ak" "$sk" >"$curlcfg"
	for _ in $(seq 150); do
		if curl -s -o /dev/null "$s3url"; then
			curl -K "$curlcfg" -X PUT "$s3url/$bucket" >/dev/null
			return 0
		fi
		kill -0 "$versitygw_pid" 2>/dev/null || break
		sleep 0.2
	done
	echo "versitygw did not start; its log:" >&2
	tail -n 5 "$log" >&2
	return 1
}
