#!/usr/bin/env bash
# Runs nginx serving the OHIF viewer in the foreground on loopback (the caller backgrounds it),
# with /dicom-web/ proxied to the DICOMweb of an Orthanc on the same machine.
#   start.sh DATA_DIR HTTP_PORT ORTHANC_HTTP_PORT
# DATA_DIR receives nginx.conf, nginx.pid, the logs (error.log, access.log) and nginx's temporary
# files (tmp/). The viewer is at http://127.0.0.1:HTTP_PORT/viewer?StudyInstanceUIDs=...
# OHIF_DIR overrides the built OHIF that install.sh unpacks to build/viewer/ohif; VIEWER_LISTEN
# the address nginx listens on (127.0.0.1) and ORTHANC_HOST Orthanc's host (127.0.0.1), which the
# pilot's viewer container sets to 0.0.0.0 and its Orthanc container.
set -euo pipefail
usage="usage: start.sh DATA_DIR HTTP_PORT ORTHANC_HTTP_PORT"
data_dir=${1:?$usage}
http_port=${2:?$usage}
orthanc_http_port=${3:?$usage}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ohif_dir=${OHIF_DIR:-$here/../../build/viewer/ohif}
listen=${VIEWER_LISTEN:-127.0.0.1}
orthanc_host=${ORTHANC_HOST:-127.0.0.1}

for port in "$http_port" "$orthanc_http_port"; do
  [[ "$port" =~ ^[0-9]+$ && "$port" -ge 1 && "$port" -le 65535 ]] || {
    echo "start.sh: port '$port' is not a number in 1..65535" >&2
    exit 2
  }
done
nginx=$(command -v nginx || echo /usr/sbin/nginx)
[[ -x "$nginx" ]] || {
  echo "start.sh: nginx not found; run: bash dicom_nodes/install-system.sh dicom_nodes/viewer/debian-packages.txt" >&2
  exit 2
}
[[ -f "$ohif_dir/index.html" ]] || {
  echo "start.sh: no built OHIF at $ohif_dir; run: bash dicom_nodes/viewer/install.sh" >&2
  exit 2
}
ohif_dir=$(cd "$ohif_dir" && pwd)

mkdir -p "$data_dir/tmp"
data_dir=$(cd "$data_dir" && pwd)
# As root, nginx would run its workers as "nobody", which may not read DATA_DIR: keep our user.
user_line="# not root: the workers run as the user who started nginx"
if [[ $(id -u) -eq 0 ]]; then
  user_line="user root $(id -gn);"
fi
# A name for Orthanc's host that DNS answers (the pilot's container) is looked up by the
# system's first usable name server, again when its answer expires: a restarted container
# gets another address. An address, or a name of /etc/hosts (which nginx's resolver does not
# read: localhost, --add-host), is written as it is and resolved once, at start.
resolver="# Orthanc's host is an address or a name of /etc/hosts: no resolver"
proxy_pass="proxy_pass http://$orthanc_host:$orthanc_http_port;"
in_hosts() {
  awk -v name="$1" '$1 !~ /^#/ { for (i = 2; i <= NF; i++) if ($i == name) found = 1 }
    END { exit !found }' /etc/hosts 2>/dev/null
}
if [[ ! "$orthanc_host" =~ ^[0-9.]+$ && "$orthanc_host" != \[* ]] && ! in_hosts "$orthanc_host"; then
  # A link-local server with a zone (fe80::1%eth0) is no address nginx takes: the next one.
  server=$(awk '$1 == "nameserver" && $2 !~ /%/ { print $2; exit }' /etc/resolv.conf 2>/dev/null || true)
  if [[ -n "$server" ]]; then
    [[ "$server" == *:* ]] && server="[$server]"
    resolver="resolver $server valid=10s;"
    proxy_pass="set \$orthanc $orthanc_host; proxy_pass http://\$orthanc:$orthanc_http_port;"
  else
    echo "start.sh: no usable name server in /etc/resolv.conf: $orthanc_host is looked up once, at start" >&2
  fi
fi
config=$(<"$here/nginx.template.conf")
# Quoted replacements: bash 5.2 would otherwise expand '&' in them to the matched text.
config=${config//@DATA_DIR@/"$data_dir"}
config=${config//@OHIF_DIR@/"$ohif_dir"}
config=${config//@APP_CONFIG@/"$here/app-config.js"}
config=${config//@HTTP_PORT@/"$http_port"}
config=${config//@ORTHANC_HTTP_PORT@/"$orthanc_http_port"}
config=${config//@LISTEN@/"$listen"}
config=${config//@ORTHANC_HOST@/"$orthanc_host"}
config=${config//@USER@/"$user_line"}
config=${config//@RESOLVER@/"$resolver"}
config=${config//@PROXY_PASS@/"$proxy_pass"}
printf '%s\n' "$config" >"$data_dir/nginx.conf"
# -e: the error log before the configuration is read (the default is under /var/log/nginx).
"$nginx" -t -q -p "$data_dir" -e "$data_dir/error.log" -c "$data_dir/nginx.conf"
# exec keeps this PID, so the caller (and stop.sh) signal nginx's master process itself;
# nginx also writes it to DATA_DIR/nginx.pid.
exec "$nginx" -p "$data_dir" -e "$data_dir/error.log" -c "$data_dir/nginx.conf"
