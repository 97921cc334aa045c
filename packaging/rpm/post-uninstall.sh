# strongroom %postun: reload units; on upgrade ($1 >= 1) restart a running service.
# The state (/var/lib/strongroom), PIN files and the strongroom user are kept on erase:
# RPM has no purge (docs/packaging.md says how to delete them).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart strongroom.service >/dev/null 2>&1 || :
    fi
fi
