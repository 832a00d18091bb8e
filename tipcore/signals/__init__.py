"""Signal processing TIP needs: Grad-CAM channel saliency and kernel spectra."""
