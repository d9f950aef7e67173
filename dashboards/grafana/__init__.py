"""Grafana dashboards as code: builders (``model``), the dashboards (``boards``), provisioning (``provision``)."""
