#!/usr/bin/env bash
# Runs Orthanc, the test PACS, in the foreground on loopback (the caller backgrounds it).
#   start.sh DATA_DIR DICOM_PORT HTTP_PORT [AET] [MODALITIES_JSON]
# DATA_DIR receives orthanc.json, orthanc.pid and the database (db/); reusing it keeps the stored
# instances. MODALITIES_JSON is Orthanc's DicomModalities, e.g. '{"node": ["LUSPACS", "127.0.0.1", 11112]}'.
# ORTHANC_DICOMWEB_PLUGIN overrides the plugin path of the Debian package orthanc-dicomweb.
# ORTHANC_EXTRA_CONFIG, a JSON object of further settings (e.g. DICOM TLS), is written beside the
# configuration in DATA_DIR/config/, which Orthanc then reads as a whole.
# ORTHANC_REMOTE_ACCESS=true lets REST and DICOMweb answer other hosts too (the pilot's
# container, reached by the viewer's nginx); false (the default) keeps them on localhost.
# ORTHANC_OPEN_QUERY=false lets only the nodes of MODALITIES_JSON query and retrieve over DICOM
# (the pilot); true (the default, the tests) lets any calling AE.
set -euo pipefail
usage="usage: start.sh DATA_DIR DICOM_PORT HTTP_PORT [AET] [MODALITIES_JSON]"
data_dir=${1:?$usage}
dicom_port=${2:?$usage}
http_port=${3:?$usage}
aet=${4:-ORTHANC}
modalities=${5:-"{}"}
plugin=${ORTHANC_DICOMWEB_PLUGIN:-/usr/share/orthanc/plugins/libOrthancDicomWeb.so}
remote=${ORTHANC_REMOTE_ACCESS:-false}
open_query=${ORTHANC_OPEN_QUERY:-true}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

for port in "$dicom_port" "$http_port"; do
  [[ "$port" =~ ^[0-9]+$ && "$port" -ge 1 && "$port" -le 65535 ]] || {
    echo "start.sh: port '$port' is not a number in 1..65535" >&2
    exit 2
  }
done
[[ "$remote" == true || "$remote" == false ]] || {
  echo "start.sh: ORTHANC_REMOTE_ACCESS must be true or false, not '$remote'" >&2
  exit 2
}
[[ "$open_query" == true || "$open_query" == false ]] || {
  echo "start.sh: ORTHANC_OPEN_QUERY must be true or false, not '$open_query'" >&2
  exit 2
}
[[ "$aet" =~ ^[A-Za-z0-9_.-]{1,16}$ ]] || {
  echo "start.sh: AE title '$aet' must be 1-16 characters of A-Z a-z 0-9 _ . -" >&2
  exit 2
}
command -v Orthanc >/dev/null || {
  echo "start.sh: Orthanc not found; run: bash dicom_nodes/install-system.sh dicom_nodes/debian-packages.txt" >&2
  exit 2
}
[[ -f "$plugin" ]] || {
  echo "start.sh: DICOMweb plugin $plugin not found; install the Debian package orthanc-dicomweb" >&2
  exit 2
}

mkdir -p "$data_dir"
data_dir=$(cd "$data_dir" && pwd)
config=$(<"$here/orthanc.template.json")
# Quoted replacements: bash 5.2 would otherwise expand '&' in them to the matched text.
config=${config//@DATA_DIR@/"$data_dir"}
config=${config//@DICOMWEB_PLUGIN@/"$plugin"}
config=${config//@HTTP_PORT@/"$http_port"}
config=${config//@DICOM_PORT@/"$dicom_port"}
config=${config//@DICOM_AET@/"$aet"}
config=${config//@MODALITIES@/"$modalities"}
config=${config//@REMOTE_ACCESS@/"$remote"}
config=${config//@OPEN_QUERY@/"$open_query"}
printf '%s\n' "$config" >"$data_dir/orthanc.json"
target="$data_dir/orthanc.json"
if [[ -n "${ORTHANC_EXTRA_CONFIG:-}" ]]; then
  mkdir -p "$data_dir/config"
  cp "$data_dir/orthanc.json" "$data_dir/config/orthanc.json"
  printf '%s\n' "$ORTHANC_EXTRA_CONFIG" >"$data_dir/config/extra.json"
  target="$data_dir/config"
fi
echo $$ >"$data_dir/orthanc.pid"
# exec keeps this PID, so the caller (and stop.sh) signal Orthanc itself.
exec Orthanc "$target"
