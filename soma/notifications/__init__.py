"""In-app notifications: class completed, purchase credited, withdrawal paid, gift received."""
