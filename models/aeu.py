"""AE-U: the autoencoder with a per-pixel log-variance head (heteroscedastic reconstruction)."""
from models.ae import AE


class AEU(AE):
    """forward(x) -> {"x_hat", "log_var", "features"}; loss: mean(exp(-log_var) (x_hat - x)^2) + mean(log_var)."""

    out_channels = 2

    def head(self, y):
        x_hat, log_var = y.chunk(2, dim=1)
        return {"x_hat": x_hat, "log_var": log_var}

    def loss(self, out, x):
        weighted = (out["log_var"].neg().exp() * (out["x_hat"] - x).pow(2)).mean()
        log_var = out["log_var"].mean()
        return weighted + log_var, {"rec": weighted, "log_var": log_var}

    def score_error(self, out, x):
        return out["log_var"].neg().exp() * (out["x_hat"] - x).pow(2)

    def pixel_variance(self, out):
        return out["log_var"].exp()
