#!/bin/sh
# The container's entry point (under tini, which passes signals to the whole process group): TorchServe in the
# foreground, logging to stdout. Its token keys go to key_file.json in the working directory, the volume
# $HOTDOG_KEYS; without a writable one it refuses to start rather than serve without authorization.
set -eu
cd "$HOTDOG_KEYS" 2>/dev/null && touch .writable 2>/dev/null && rm -f .writable || {
    echo "hotdog: $HOTDOG_KEYS is not writable by uid $(id -u): TorchServe writes its token keys there; mount a writable volume (docker run -v hotdog-keys:$HOTDOG_KEYS ...)" >&2
    exit 1
}
echo "hotdog: token authorization is on; the keys are in $HOTDOG_KEYS/key_file.json (docker exec <container> cat $HOTDOG_KEYS/key_file.json)"
exec torchserve --start --foreground --ncs --model-store /opt/hotdog/model_store --models hotdog=hotdog.mar \
    --ts-config /opt/hotdog/serve_config/config.container.properties \
    --log-config /opt/hotdog/serve_config/log4j2.container.xml
