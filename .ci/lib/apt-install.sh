# Sourced by the .ci/run.d hooks: apt_install NAME PACKAGE... installs the Debian packages in `missing`
# (the hook's own check decides which), as root or through sudo, and says so under the hook's NAME.
apt_install() {
    local name=$1; shift
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "$name: installing $*"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
