# Slipstream as a sidecar: slim, non-root, health-checked. Listeners are set by env
# (SLIPSTREAM_LISTEN / SLIPSTREAM_ADMIN_LISTEN) or a mounted config (SLIPSTREAM_CONFIG).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/slipstream --create-home slipstream
COPY --from=build /install /usr/local
COPY config /etc/slipstream
USER slipstream
WORKDIR /var/lib/slipstream
# Inside a pod the sidecar listens on the pod's loopback; to listen on 0.0.0.0 configure client
# credentials (auth.users in a mounted config) or set SLIPSTREAM_AUTH__ANONYMOUS=true explicitly
# (unsigned reads only). The admin listener is on 0.0.0.0 for probes and scrapers (/metrics,
# /healthz, /readyz stay open); its state-changing routes need `Authorization: Bearer <token>`,
# the token read from SLIPSTREAM_ADMIN__TOKEN_FILE: mount a secret there, or the entrypoint
# writes a random one on start (mode 0600; `cat` it inside the container). To take the token
# from a variable instead: SLIPSTREAM_ADMIN__TOKEN_FILE= SLIPSTREAM_ADMIN__TOKEN_ENV=NAME.
ENV SLIPSTREAM_LISTEN=127.0.0.1:9900 \
    SLIPSTREAM_ADMIN_LISTEN=0.0.0.0:9901 \
    SLIPSTREAM_ADMIN__TOKEN_FILE=/var/lib/slipstream/admin-token \
    SLIPSTREAM_CACHE__DIR=/var/lib/slipstream/cache \
    SLIPSTREAM_LOG__FORMAT=json \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/slipstream/cache"]
EXPOSE 9900 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import os,urllib.request; h,p=os.environ['SLIPSTREAM_ADMIN_LISTEN'].rsplit(':',1); h='127.0.0.1' if h in ('0.0.0.0','') else h; urllib.request.urlopen(f'http://{h}:{p}/readyz', timeout=2)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["/bin/sh", "-c", "f=\"$SLIPSTREAM_ADMIN__TOKEN_FILE\"; if [ -n \"$f\" ] && [ ! -s \"$f\" ]; then (umask 077 && python -c 'import secrets; print(secrets.token_urlsafe(32))' > \"$f\") || exit 1; fi; exec slipstream \"$@\"", "slipstream"]
CMD ["serve"]
