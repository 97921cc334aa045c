# strongroom %post: directories and HSM PIN files (never replacing existing ones; the
# configuration files are %config(noreplace), so edits are kept on upgrade).
# Without systemd-tmpfiles, or if it fails (e.g. no /proc in an image build root), the same
# directories by hand: `strongroom init` needs the token store.
if ! { command -v systemd-tmpfiles >/dev/null 2>&1 \
        && systemd-tmpfiles --create /usr/lib/tmpfiles.d/strongroom.conf >/dev/null 2>&1; }; then
    install -d -o strongroom -g strongroom -m 0700 /var/lib/strongroom \
        /var/lib/strongroom/softhsm /var/lib/strongroom/softhsm/tokens
fi
install -d -o strongroom -g strongroom -m 0700 /etc/strongroom/tls
for pin in /etc/strongroom/hsm-pin /etc/strongroom/hsm-so-pin; do
    if [ ! -e "$pin" ]; then
        (umask 077 && head -c 24 /dev/urandom | base64 > "$pin.new")
        chown strongroom:strongroom "$pin.new"
        mv "$pin.new" "$pin"
    fi
done
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
