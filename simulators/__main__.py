"""``python -m simulators``: the simulator without the rest of the IOC (same flags as ``ioc simulate``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ingest.tls import TlsOptions
from simulators.cli import add_arguments, run

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Parse flags and run."""
    parser = argparse.ArgumentParser(prog="python -m simulators", description="IOC device simulator")
    parser.add_argument("--mqtt-url", default=os.environ.get("IOC_MQTT_URL", "mqtt://127.0.0.1:1883"),
                        help="broker URL (default $IOC_MQTT_URL or mqtt://127.0.0.1:1883)")
    parser.add_argument("--mqtt-ca-file", default=os.environ.get("IOC_MQTT__CA_FILE"),
                        help="mqtts:// only: CA bundle of the broker (default $IOC_MQTT__CA_FILE, else the system's)")
    parser.add_argument("--mqtt-cert-file", default=os.environ.get("IOC_MQTT__CERT_FILE"),
                        help="mqtts:// only: client certificate (default $IOC_MQTT__CERT_FILE)")
    parser.add_argument("--mqtt-key-file", default=os.environ.get("IOC_MQTT__KEY_FILE"),
                        help="mqtts:// only: client key (default $IOC_MQTT__KEY_FILE)")
    parser.add_argument("--log-level", default=os.environ.get("IOC_LOG_LEVEL", "INFO"))
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args, args.mqtt_url, TlsOptions(args.mqtt_ca_file, args.mqtt_cert_file, args.mqtt_key_file))


if __name__ == "__main__":
    sys.exit(main())
