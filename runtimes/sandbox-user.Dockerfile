# Appended to every runtime's Dockerfile by `petri images build` (gateway/images.py): the one
# place the sandbox user is made. SANDBOX_UID/SANDBOX_GID come from PETRI_SANDBOX_USER, so the
# user programs run as has a passwd entry (the JVM takes user.home from it) and owns /sandbox.
USER root
ARG SANDBOX_UID=1000
ARG SANDBOX_GID=1000
RUN (getent group "${SANDBOX_GID}" >/dev/null || groupadd --gid "${SANDBOX_GID}" sandbox) \
 && (getent passwd "${SANDBOX_UID}" >/dev/null \
     || useradd --uid "${SANDBOX_UID}" --gid "${SANDBOX_GID}" --home-dir /sandbox \
          --no-create-home --shell /bin/sh sandbox) \
 && mkdir -p /sandbox && chown "${SANDBOX_UID}:${SANDBOX_GID}" /sandbox
WORKDIR /sandbox
USER ${SANDBOX_UID}:${SANDBOX_GID}
CMD ["sleep", "infinity"]
