"""Default configuration files (YAML), shipped as ``recbole_perpeft.properties``."""
