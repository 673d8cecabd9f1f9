from models.qcd import QCDModel


def build_model(cfg):
    """The model described by `cfg` (from utils.config.load_config)."""
    return QCDModel(cfg)


__all__ = ["QCDModel", "build_model"]
