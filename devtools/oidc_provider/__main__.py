"""`python -m devtools.oidc_provider [--port N] [--state DIR]`: the test identity
provider in the foreground (the demo's), with a client for a hubimages on
http://127.0.0.1:8000 and the people `--user NAME:PASSWORD:GROUP,GROUP` names."""

import argparse
import signal
import time
from pathlib import Path

from devtools.oidc_provider import CLIENT_ID, OidcProvider


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--state", type=Path, help="kept between runs (default: a temp dir)")
    parser.add_argument("--app", default="http://127.0.0.1:8000", help="hubimages's address")
    parser.add_argument("--client-secret", help="default: a new one, printed")
    parser.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD:GROUPS")
    args = parser.parse_args()
    if args.state:
        args.state.mkdir(parents=True, exist_ok=True)
    provider = OidcProvider(port=args.port, state=args.state)
    if args.client_secret:
        provider.client_secret = args.client_secret
    provider.start()
    provider.client([f"{args.app}/accounts/oidc/oidc/login/callback/"])
    for spec in args.user:
        name, password, groups = (spec.split(":", 2) + ["", ""])[:3]
        provider.user(name, password=password, groups=[g for g in groups.split(",") if g])
    print(
        f"issuer {provider.issuer} client {CLIENT_ID} secret {provider.client_secret}", flush=True
    )
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while provider.process and provider.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        provider.stop()


if __name__ == "__main__":
    main()
