"""Speech data: manifests of users' utterances, audio loading, and the built-in espeak-ng corpus."""
