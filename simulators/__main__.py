"""``python -m simulators``: the simulator without the rest of the IOC (same flags as ``ioc simulate``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from simulators.cli import add_arguments, run

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Parse flags and run."""
    parser = argparse.ArgumentParser(prog="python -m simulators", description="IOC device simulator")
    parser.add_argument("--mqtt-url", default=os.environ.get("IOC_MQTT_URL", "mqtt://127.0.0.1:1883"),
                        help="broker URL (default $IOC_MQTT_URL or mqtt://127.0.0.1:1883)")
    parser.add_argument("--log-level", default=os.environ.get("IOC_LOG_LEVEL", "INFO"))
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args, args.mqtt_url)


if __name__ == "__main__":
    sys.exit(main())
