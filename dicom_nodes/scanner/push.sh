#!/usr/bin/env bash
# The scanner simulator: pushes DICOM cines to a node with dcmtk's storescu, proposing JPEG
# Baseline first (-xy), as most ultrasound scanners send.
#   dicom_nodes/scanner/push.sh HOST PORT [CALLED_AE] [CALLING_AE] FILE_OR_FOLDER...
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 HOST PORT [CALLED_AE] [CALLING_AE] FILE_OR_FOLDER..." >&2
  exit 2
fi
host=$1 port=$2
shift 2
called=LUSPACS calling=SCANNER
if [[ $# -gt 1 && ! -e $1 ]]; then called=$1; shift; fi
if [[ $# -gt 1 && ! -e $1 ]]; then calling=$1; shift; fi
exec storescu -v -xy +sd +r -aet "$calling" -aec "$called" "$host" "$port" "$@"
