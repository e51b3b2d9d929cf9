"""What a profile's runs cost before they run: closed-form images and FLOPs, training rates and where they come
from, this machine's measured rates (timing, loader throughput), and the plan's table."""
