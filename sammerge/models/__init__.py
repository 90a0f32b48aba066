"""Models below the zoo: encoder architectures and heads (model), linearized evaluation (linearize), zoo recipes
and presets (presets). Everything above (zoo, evaluation, analytics, training) imports them; they import nothing
of sammerge but errors."""
