"""Device simulators for the IOC: a city model, realistic device signals, labelled incidents, an MQTT load driver.

``simulators.city.build_city`` gives the city and its devices (pure); ``simulators.engine.Simulator``
publishes them over MQTT following ``docs/device-api.md``; ``simulators.cli`` is mounted as ``ioc simulate``.
"""
