"""One module per wizard stage."""
