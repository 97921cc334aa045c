# strongroom %pre: the service user (systemd-sysusers from the packaged sysusers.d entry
# is not installed yet at %pre, so the same entry is given inline).
if ! getent passwd strongroom >/dev/null; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        echo 'u strongroom - "strongroom security realm" /var/lib/strongroom' | systemd-sysusers --replace=/usr/lib/sysusers.d/strongroom.conf -
    else
        useradd --system --user-group --home-dir /var/lib/strongroom --no-create-home \
            --shell /sbin/nologin --comment "strongroom security realm" strongroom
    fi
fi
