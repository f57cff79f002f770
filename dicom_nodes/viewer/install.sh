#!/usr/bin/env bash
# Installs the viewer proof's npm pieces; idempotent (make install runs it after the Debian
# packages, which bring nginx and chromium):
#   * playwright-core, pinned by package-lock.json, into dicom_nodes/viewer/node_modules (npm ci);
#   * the built OHIF viewer: only the tarball of the npm package @ohif/app (its dist/ is the
#     whole static web app), checked against the registry's sha512 pinned below and unpacked to
#     build/viewer/ohif/. Installing the package itself would pull its build dependencies too.
# Needs node >= 20 and npm, and the npm registry (only when something is missing).
set -euo pipefail
ohif_version=3.13.2
# npm view @ohif/app@3.13.2 dist.integrity
ohif_integrity=sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build="$root/build/viewer"
ohif_dir="$build/ohif"

for tool in node npm; do
  command -v "$tool" >/dev/null || {
    echo "install.sh: $tool not found; install Node.js >= 20 with npm (e.g. from nodejs.org)" >&2
    exit 2
  }
done
node_major=$(node -p 'process.versions.node.split(".")[0]')
[[ "$node_major" -ge 20 ]] || {
  echo "install.sh: node $(node --version) is too old; playwright-core needs >= 20" >&2
  exit 2
}

# playwright-core: reinstalled only when the lock file changed since the last npm ci (the copy
# in node_modules/ says what was installed).
installed_lock="$here/node_modules/.lus-pacs-package-lock.json"
if ! cmp -s "$here/package-lock.json" "$installed_lock" 2>/dev/null; then
  (cd "$here" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
  cp "$here/package-lock.json" "$installed_lock"
fi

# OHIF: the stamp holds the version and integrity of the unpacked tarball.
stamp="$ohif_dir/.lus-pacs-ohif"
if [[ -f "$stamp" && "$(<"$stamp")" == "$ohif_version $ohif_integrity" ]]; then
  exit 0
fi
mkdir -p "$build"
tarball="$build/ohif-app-$ohif_version.tgz"
if [[ ! -f "$tarball" ]]; then
  (cd "$build" && npm pack --silent "@ohif/app@$ohif_version" >/dev/null)
fi
actual=$(node -e '
  const data = require("fs").readFileSync(process.argv[1]);
  console.log("sha512-" + require("crypto").createHash("sha512").update(data).digest("base64"));
' "$tarball")
if [[ "$actual" != "$ohif_integrity" ]]; then
  rm -f "$tarball"
  echo "install.sh: $tarball has integrity $actual, expected $ohif_integrity; removed it" >&2
  exit 1
fi
unpack="$build/ohif.unpacking"
rm -rf "$unpack"
mkdir -p "$unpack"
tar -xzf "$tarball" -C "$unpack" package/dist
[[ -f "$unpack/package/dist/index.html" ]] || {
  echo "install.sh: $tarball has no package/dist/index.html; not a built OHIF" >&2
  exit 1
}
rm -rf "$ohif_dir"
mv "$unpack/package/dist" "$ohif_dir"
rm -rf "$unpack"
echo "$ohif_version $ohif_integrity" >"$stamp"
echo "install.sh: OHIF $ohif_version unpacked to $ohif_dir"
